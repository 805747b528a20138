#!/usr/bin/env python3
"""What the monitor page costs the instrument: `lalelu demo` with 0, 1 and 3 pages open in Debian's
chromium (Playwright), the edge's overhead (capture to pose minus inference) and latency side by side.

    .venv/bin/python tools/monitor_cost.py --seconds 30 --out benchmarks/monitor

Prints a table and writes cost.json and a screenshot of the page (monitor.png). Runs in order
0, 1, 3, 0, 1, 3 pages (two rounds) so that a drift of the machine shows as a drift, not as a cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

from demo_runs import demo_config, print_table, row, write_runs

from lalelu.cli.demo import backend_and_edge


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(pages: int, seconds: float, shot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        config = demo_config(work / "demo.toml", port)
        with (
            sync_playwright() as pw,
            backend_and_edge(config, seconds, work, quiet=True) as (_, edge, summary),
        ):
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            opened = []
            deadline = time.monotonic() + 30
            while len(opened) < pages and time.monotonic() < deadline:
                page = browser.new_page(viewport={"width": 960, "height": 620})
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                    opened.append(page)
                except Exception:  # not listening yet
                    page.close()
                    time.sleep(0.3)
            shot_at = time.monotonic() + min(10.0, seconds / 2)
            while edge.poll() is None:
                time.sleep(0.5)
                if shot is not None and opened and time.monotonic() > shot_at:
                    opened[0].screenshot(path=str(shot))
                    shot = None
            pictures = [p.evaluate("monitor.pictures") for p in opened]
            browser.close()
            result = json.loads(summary.read_text())
    return row("pages", len(opened), result, pictures_per_page=pictures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/monitor"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for pages in (0, 1, 3):
            shot = args.out / "monitor.png" if (r, pages) == (0, 1) else None
            runs.append(one_run(pages, args.seconds, shot))
            print(json.dumps(runs[-1]), flush=True)
    print_table(runs, "pages")
    write_runs(args.out / "cost.json", args.seconds, runs)


if __name__ == "__main__":
    main()
