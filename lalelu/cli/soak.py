"""`lalelu soak`: edge and backend together at 100 fps for a long time.

Reports what only shows over time: frames lost per minute, resident memory growth of both processes,
and latency drift (p50/p99 per minute). The default is 30 minutes; tests run it for seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lalelu.cli.bench import machine_facts
from lalelu.cli.demo import DEMO_CONFIG, backend_and_edge, child_failed, log_tail, progress
from lalelu.cli.plots import load_telemetry
from lalelu.config import load_config
from lalelu.errors import LaleluError
from lalelu.timing import NS_PER_MS


def rss_mb(pid: int) -> float:
    """Resident set size of a live process (0.0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def per_interval(rows: np.ndarray, fps: float, interval_s: float) -> list[dict]:
    """Poses, missing frames (lost or skipped for the latency budget) and latency per interval, frames
    placed by their sequence number."""
    seq = rows["seq"]
    seq0 = int(seq.min())
    frames_per_bin = max(1, round(fps * interval_s))
    latency_ms = (rows["pose_ns"] - rows["capture_ns"]) / NS_PER_MS
    bins = (seq - seq0) // frames_per_bin
    all_seqs = np.arange(seq0, int(seq.max()) + 1)
    missing = np.setdiff1d(all_seqs, seq, assume_unique=True)
    missing_bins = np.bincount((missing - seq0) // frames_per_bin, minlength=int(bins.max()) + 1)
    out: list[dict] = []
    for b in range(int(bins.max()) + 1):
        lat = latency_ms[bins == b]
        if lat.size == 0:
            out.append({"interval": b + 1, "poses": 0, "missing": int(missing_bins[b])})
            continue
        out.append(
            {
                "interval": b + 1,
                "poses": int(lat.size),
                "missing": int(missing_bins[b]),
                "local": int(rows["local"][bins == b].sum()),
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "max_ms": round(float(lat.max()), 3),
            }
        )
    return out


def memory_growth(samples: list[tuple[float, float, float]], settle_s: float) -> dict:
    """RSS of backend and edge: after settling (imports, warm-up, first allocations) and at the end."""
    t = np.array([s[0] for s in samples])
    report: dict[str, dict[str, float]] = {}
    for i, name in ((1, "backend"), (2, "edge")):
        mb = np.array([s[i] for s in samples])
        live = mb > 0
        t_live, mb = t[live], mb[live]
        if mb.size == 0:
            report[name] = {}
            continue
        start = int(np.searchsorted(t_live, min(settle_s, t_live[-1])))
        hours = max(t_live[-1] - t_live[start], 1e-9) / 3600
        growth = float(mb[-1] - mb[start])
        report[name] = {
            "settled_mb": round(float(mb[start]), 1),
            "end_mb": round(float(mb[-1]), 1),
            "max_mb": round(float(mb.max()), 1),
            "growth_mb": round(growth, 2),
            "growth_mb_per_hour": round(growth / hours, 2),
        }
    return report


def run_soak(
    minutes: float,
    config: Path | None = None,
    fps: float | None = None,
    interval_s: float = 60.0,
    sample_s: float = 5.0,
    quiet: bool = False,
) -> dict:
    if minutes <= 0 or interval_s <= 0 or sample_s <= 0:
        raise LaleluError("--minutes, --interval-s and --sample-s must be positive")
    config = config or DEMO_CONFIG
    fps = fps or load_config(config).camera.fps
    seconds = minutes * 60
    samples: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="lalelu-soak-") as tmp:
        telemetry = Path(tmp) / "edge.jsonl"
        edge_args = ("--telemetry", str(telemetry), "--fps", str(fps))
        with backend_and_edge(config, seconds, Path(tmp), quiet, edge_args) as (backend, edge, summary_file):
            start = time.monotonic()
            next_sample = start
            with progress("soak", seconds, quiet) as update:
                while edge.poll() is None:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append((now - start, rss_mb(backend.pid), rss_mb(edge.pid)))
                        next_sample += sample_s
                        update(now - start)
                    time.sleep(0.1)
            if edge.returncode != 0:
                raise child_failed(
                    f"the soak's edge exited with code {edge.returncode}{log_tail(Path(tmp), 'edge')}",
                    edge.returncode,
                )
            if backend.poll() is not None:
                raise child_failed(
                    f"the backend died during the soak (exit code {backend.returncode})"
                    f"{log_tail(Path(tmp), 'backend')}",
                    backend.returncode,
                )
        summary = json.loads(summary_file.read_text())
        rows = load_telemetry(telemetry)
    intervals = per_interval(rows, fps, interval_s)
    full = [b for b in intervals if b["poses"] >= 0.5 * fps * interval_s]
    return {
        "machine": machine_facts(),
        "config": str(config),
        "fps": fps,
        "minutes": minutes,
        "interval_s": interval_s,
        "edge": {k: v for k, v in summary.items() if k != "stages_ms"},
        "intervals": intervals,
        "p99_drift_ms": round(full[-1]["p99_ms"] - full[0]["p99_ms"], 3) if full else None,
        "memory": memory_growth(samples, settle_s=min(60.0, seconds / 4)),
        "rss_samples": [[round(a, 1), round(b, 1), round(c, 1)] for a, b, c in samples],
    }


def format_soak(report: dict) -> str:
    e = report["edge"]
    lines = [
        f"soak: {report['minutes']:g} min at {report['fps']:g} fps, {report['config']}",
        f"frames inferred {e['frames_inferred']}, poses {e['poses_received']}, lost {e['frames_lost']} "
        f"(dropped at capture {e['frames_dropped_at_capture']}), skipped for the latency budget "
        f"{e.get('frames_skipped', 0)}, backend losses {e['backend_losses']}",
        f"{'interval':>8} {'poses':>7} {'missing':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for b in report["intervals"]:
        if b["poses"]:
            lines.append(
                f"{b['interval']:>8} {b['poses']:>7} {b['missing']:>8} {b['p50_ms']:>8.2f} "
                f"{b['p99_ms']:>8.2f} {b['max_ms']:>8.2f}"
            )
        else:
            lines.append(f"{b['interval']:>8} {0:>7} {b['missing']:>8}        -        -        -")
    if report["p99_drift_ms"] is not None:
        lines.append(f"p99 drift, last full interval minus first: {report['p99_drift_ms']:+.2f} ms")
    for name, m in report["memory"].items():
        if m:
            lines.append(
                f"RSS {name:<7} {m['settled_mb']:.1f} MB settled -> {m['end_mb']:.1f} MB at the end "
                f"(max {m['max_mb']:.1f}, {m['growth_mb']:+.2f} MB, {m['growth_mb_per_hour']:+.2f} MB/h)"
            )
    return "\n".join(lines)
