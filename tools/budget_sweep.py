#!/usr/bin/env python3
"""`lalelu demo` with several `[edge] latency_budget_ms` values side by side (interleaved rounds): what a
tighter budget buys in overhead and latency, and what it costs in skipped frames and hits.

    .venv/bin/python tools/budget_sweep.py --budgets 20,5,1 --seconds 60 --rounds 2 --out benchmarks/live/budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from demo_runs import demo_config, print_table, row, write_runs

from lalelu.cli.demo import run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="20,5,1", help="latency_budget_ms values, comma separated")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/live/budget"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    runs = []
    for _ in range(args.rounds):
        for budget in budgets:
            with tempfile.TemporaryDirectory() as tmp:
                config = demo_config(Path(tmp) / "demo.toml", 0, latency_budget_ms=budget)
                runs.append(row("budget_ms", budget, run_demo(args.seconds, config, quiet=True)))
            print(json.dumps(runs[-1]), flush=True)
    print_table(runs, "budget_ms")
    write_runs(args.out / "sweep.json", args.seconds, runs)


if __name__ == "__main__":
    main()
