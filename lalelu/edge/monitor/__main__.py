"""`python -m lalelu.edge.monitor FEED < SETTINGS_JSON`: the monitor's process, started by the edge. The
settings (with the token) come on stdin, not in argv, which every local user can read in `ps`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lalelu.edge.monitor.server import run_monitor
from lalelu.edge.monitor.settings import MonitorSettings
from lalelu.logs import setup_logging

if __name__ == "__main__":
    setup_logging(logging.INFO)  # like the edge's: journald's priorities under systemd, no second timestamp
    run_monitor(Path(sys.argv[1]), MonitorSettings.from_json(sys.stdin.read()))
