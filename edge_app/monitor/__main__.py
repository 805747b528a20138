"""`python -m edge_app.monitor FEED SETTINGS_JSON`: the monitor's process, started by the edge."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from edge_app.monitor.server import run_monitor

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_monitor(Path(sys.argv[1]), json.loads(sys.argv[2]))
