"""PNG plots of latency: histogram and per-inference timeline (where fast and slow phases show)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lalelu.errors import LaleluError
from lalelu.timing import TELEMETRY_DTYPE, stage_summary


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LaleluError("plots need matplotlib: pip install 'lalelu-drums[bench]'") from exc
    return plt


def plot_series(series: dict[str, np.ndarray], title: str, out: Path) -> Path:
    """series: name -> latencies in ms, in frame order. One figure: timeline above, histogram below."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    for name, ms in series.items():
        top.plot(np.arange(ms.size), ms, lw=0.6, label=name)
        bottom.hist(
            ms,
            bins=100,
            alpha=0.6,
            label=f"{name} (p50 {np.median(ms):.2f}, p99 {np.percentile(ms, 99):.2f})",
        )
    top.set_xlabel("frame / inference")
    top.set_ylabel("ms")
    top.set_title(title)
    top.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("ms")
    bottom.set_ylabel("count")
    bottom.set_yscale("log")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_bench(report: dict, out_dir: Path) -> list[Path]:
    paths = []
    for threads in sorted({r["threads"] for r in report["results"]}):
        series = {
            r["config"]: np.asarray(r["samples_ns"]) / 1e6
            for r in report["results"]
            if r["threads"] == threads
        }
        engine = report["results"][0]["engine"]
        paths.append(
            plot_series(
                series,
                f"{engine}, {threads} threads: {report['machine']['cpu_model']}",
                out_dir / f"bench-{engine}-{threads}threads.png",
            )
        )
    return paths


def load_telemetry(path: Path) -> np.ndarray:
    rows = []
    try:
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                try:
                    d = json.loads(line)
                    rows.append(tuple(int(d[k]) for k in TELEMETRY_DTYPE.names or ()))
                except (ValueError, KeyError) as exc:
                    raise LaleluError(
                        f"{path}:{n} is not a telemetry line ({exc}); write one with "
                        "`lalelu edge --telemetry FILE`"
                    ) from exc
    except OSError as exc:
        raise LaleluError(f"cannot read telemetry {path}: {exc.strerror}") from exc
    if not rows:
        raise LaleluError(f"{path} holds no telemetry")
    return np.array(rows, dtype=TELEMETRY_DTYPE)


def plot_telemetry(rows: np.ndarray, out: Path) -> Path:
    total = (rows["pose_ns"] - rows["capture_ns"]) / 1e6
    infer = rows["backend_infer_ns"] / 1e6
    return plot_series(
        {"total": total, "inference": infer, "overhead": total - infer}, "live telemetry per stage", out
    )


def telemetry_table(rows: np.ndarray) -> str:
    s = stage_summary(rows)
    lines = [f"{'stage':<16} {'p50':>8} {'p99':>8} {'max':>8}  (ms, {rows.size} frames)"]
    lines += [
        f"{k:<16} {v['p50']:>8.3f} {v['p99']:>8.3f} {v['max']:>8.3f}" for k, v in s.items() if v.get("n")
    ]
    return "\n".join(lines)
