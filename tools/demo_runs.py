"""What the demo benchmarks in tools/ share: a demo configuration with edits, one row per run from the
demo's summary, the side-by-side table and the JSON with the machine described."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from lalelu.cli.demo import DEMO_CONFIG

SUMMARY_KEYS = (
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


def demo_config(path: Path, monitor_port: int, **edge: float) -> Path:
    """The bundled demo configuration with the monitor on `monitor_port` and [edge] keys set (replaced
    where the file has them, added where it does not)."""
    text = DEMO_CONFIG.read_text().replace("port = 8700", f"port = {monitor_port}")
    for key, value in edge.items():
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        if not found:
            text = text.replace("[edge]\n", f"[edge]\n{key} = {value}\n", 1)
    path.write_text(text)
    return path


def row(label: str, value: object, summary: dict, **extra: object) -> dict:
    return {label: value, **{k: summary[k] for k in SUMMARY_KEYS if k in summary}, **extra}


def print_table(runs: list[dict], label: str) -> None:
    print(
        f"\n{label:>9} {'overhead p50':>12} {'p99':>7} {'latency p50':>11} {'p99':>7} {'poses':>6} "
        f"{'skipped':>7} {'lost':>5} {'hits/exp':>8}"
    )
    for r in runs:
        o, lat = r["overhead_ms"], r["latency_ms"]
        print(
            f"{r[label]:>9g} {o['p50']:>12.3f} {o['p99']:>7.2f} {lat['p50']:>11.2f} {lat['p99']:>7.2f} "
            f"{r['poses_received']:>6} {r['frames_skipped']:>7} {r['frames_lost']:>5} "
            f"{r['hits']:>4}/{r.get('hits_expected', '-')}"
        )


def write_runs(path: Path, seconds: float, runs: list[dict]) -> None:
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, {len(os.sched_getaffinity(0))} CPUs"
    path.write_text(json.dumps({"machine": machine, "seconds": seconds, "runs": runs}, indent=1))
