#!/usr/bin/env python3
"""`lalelu demo` with several `[edge] latency_budget_ms` values side by side (interleaved rounds): what a
tighter budget buys in overhead and latency, and what it costs in skipped frames and hits.

    .venv/bin/python tools/budget_sweep.py --budgets 20,5,1 --seconds 60 --rounds 2 --out benchmarks/live/budget
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
from pathlib import Path

from lalelu_commands.demo import DEMO_CONFIG, run_demo


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
    base = DEMO_CONFIG.read_text()
    for _ in range(args.rounds):
        for budget in budgets:
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "demo.toml"
                text = re.sub(r"\[edge\]\n", f"[edge]\nlatency_budget_ms = {budget}\n", base)
                config.write_text(text.replace("port = 8700", "port = 0"))
                result = run_demo(args.seconds, config, quiet=True)
            run = {
                "budget_ms": budget,
                **{
                    k: result[k]
                    for k in (
                        "frames_inferred",
                        "frames_skipped",
                        "frames_lost",
                        "poses_received",
                        "hits",
                        "hits_expected",
                        "latency_ms",
                        "inference_ms",
                        "overhead_ms",
                    )
                },
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
    print(
        f"\n{'budget':>6} {'overhead p50':>12} {'p99':>7} {'latency p50':>11} {'p99':>7} {'poses':>6} "
        f"{'skipped':>7} {'lost':>5} {'hits/exp':>8}"
    )
    for r in runs:
        o, lat = r["overhead_ms"], r["latency_ms"]
        print(
            f"{r['budget_ms']:>6g} {o['p50']:>12.3f} {o['p99']:>7.2f} {lat['p50']:>11.2f} {lat['p99']:>7.2f} "
            f"{r['poses_received']:>6} {r['frames_skipped']:>7} {r['frames_lost']:>5} "
            f"{r['hits']:>4}/{r['hits_expected']}"
        )
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, {len(os.sched_getaffinity(0))} CPUs"
    (args.out / "sweep.json").write_text(
        json.dumps({"machine": machine, "seconds": args.seconds, "runs": runs}, indent=1)
    )


if __name__ == "__main__":
    main()
