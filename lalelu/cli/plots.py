"""`lalelu bench --from-telemetry`: the per-stage table of both apps' telemetry, what the backend's slow
frames had (slow_frames), the round trip cut into its legs (round_trip_legs), and PNG plots of latency:
histogram and per-inference timeline (where fast and slow phases show)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from lalelu.errors import LaleluError
from lalelu.timing import (
    BACKEND_TELEMETRY_DTYPE,
    NS_PER_MS,
    TELEMETRY_DTYPE,
    backend_summary,
    stage_summary,
    summarize_ns,
)


def round_trip_legs(edge: np.ndarray, backend: np.ndarray) -> dict[str, dict[str, float]] | None:
    """Capture -> pose of each frame cut into its legs, from both apps' rows joined by sequence number:
    edge (capture -> sent), to the backend (sent -> its first byte read), receive (first -> last byte),
    served (last byte -> reply sent) and back to the edge (reply sent -> pose): the legs add up to the
    total. Only where both ran on one machine (CLOCK_MONOTONIC is per machine): None when the joined
    timestamps are not in that order, as with two machines' clocks."""
    common, ei, bi = np.intersect1d(edge["seq"], backend["seq"], return_indices=True)
    if not common.size:
        return None
    e, b = edge[ei], backend[bi]
    stamps = [
        e["capture_ns"],
        e["sent_ns"],
        b["first_byte_ns"],
        b["received_ns"],
        b["replied_ns"],
        e["pose_ns"],
    ]
    legs = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    if np.mean(np.all(np.array(legs) >= 0, axis=0)) < 0.99:
        return None
    names = ("edge", "to_backend", "receive", "served", "to_edge")
    out = {name: summarize_ns(leg) for name, leg in zip(names, legs, strict=True)}
    out["total"] = summarize_ns(e["pose_ns"] - e["capture_ns"])
    return out


def slow_frames(rows: np.ndarray, factor: float = 2.0) -> dict[str, dict[str, float]]:
    """What the backend's slow frames (served > factor x median) had that the others did not: the mean
    context switches, page faults and GPU clock of each group, and how far apart slow frames come."""
    served = rows["replied_ns"] - rows["received_ns"]
    slow = served > factor * np.median(served) if served.size else np.zeros(0, bool)
    out: dict[str, dict[str, float]] = {}
    for name, pick in (("slow", slow), ("others", ~slow)):
        group = rows[pick]
        out[name] = {"frames": int(group.size)}
        if group.size:
            out[name].update(
                {
                    k: float(group[k].mean())
                    for k in (
                        "involuntary_switches",
                        "voluntary_switches",
                        "minor_faults",
                        "major_faults",
                        "sm_mhz",
                    )
                }
            )
            out[name]["served_p50_ms"] = float(np.median(served[pick])) / NS_PER_MS
            out[name]["engine_p50_ms"] = float(np.median(group["engine_ns"])) / NS_PER_MS
            if (group["device_ns"] >= 0).any():
                out[name]["device_p50_ms"] = (
                    float(np.median(group["device_ns"][group["device_ns"] >= 0])) / NS_PER_MS
                )
    starts = rows["received_ns"][slow]
    if starts.size > 1:
        gaps = np.diff(starts) / 1e9
        runs = gaps[gaps > 0.1]  # slow frames closer than 0.1 s belong to one cluster
        out["clusters"] = {
            "count": int(runs.size + 1),
            "median_gap_s": float(np.median(runs)) if runs.size else 0.0,
        }
    return out


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
    """An edge's (`lalelu edge --telemetry`) or a backend's (`lalelu backend --telemetry`) JSON lines, as
    rows of TELEMETRY_DTYPE or BACKEND_TELEMETRY_DTYPE: the first line's fields tell which."""
    rows = []
    dtype = TELEMETRY_DTYPE
    try:
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                try:
                    d = json.loads(line)
                    if n == 1 and "engine_ns" in d:
                        dtype = BACKEND_TELEMETRY_DTYPE
                    rows.append(tuple(int(d[k]) for k in dtype.names or ()))
                except (ValueError, KeyError, TypeError) as exc:
                    raise LaleluError(
                        f"{path}:{n} is not a telemetry line ({exc}); write one with "
                        "`lalelu edge --telemetry FILE` or `lalelu backend --telemetry FILE`"
                    ) from exc
    except OSError as exc:
        raise LaleluError(f"cannot read telemetry {path}: {exc.strerror}") from exc
    if not rows:
        raise LaleluError(f"{path} holds no telemetry")
    return np.array(rows, dtype=dtype)


def split_telemetry(paths: list[Path]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(edge rows, backend rows) from one or two files, either order."""
    edge = backend = None
    for path in paths:
        rows = load_telemetry(path)
        if rows.dtype == BACKEND_TELEMETRY_DTYPE:
            backend = rows
        else:
            edge = rows
    return edge, backend


def plot_telemetry(
    edge: np.ndarray | None, backend: np.ndarray | None, out: Path, frames: int = 1000
) -> Path:
    """The original project's graph: `frames` consecutive live frames (the last ones: warm, steady),
    inference and total per frame; below, the backend's stages and the GPU clock of the same frames."""
    plt = _pyplot()
    panels = 1 + (backend is not None) + (backend is not None and bool(backend["sm_mhz"].any()))
    fig, axes = plt.subplots(panels, 1, figsize=(11, 3.2 * panels), sharex=False, squeeze=False)
    ax = axes[0][0]
    if edge is not None:
        e = edge[-frames:]
        total = (e["pose_ns"] - e["capture_ns"]) / 1e6
        ax.plot(
            total,
            lw=0.7,
            label=f"total, capture -> pose (p50 {np.median(total):.2f}, p99 {np.percentile(total, 99):.2f}, max {total.max():.2f})",
        )
        infer = e["backend_infer_ns"] / 1e6
        ax.plot(
            infer, lw=0.7, label=f"inference (p50 {np.median(infer):.2f}, p99 {np.percentile(infer, 99):.2f})"
        )
        ax.set_title(f"{e.size} consecutive live frames")
    ax.set_ylabel("ms")
    ax.set_xlabel("frame")
    ax.legend(loc="upper right", fontsize=8)
    if backend is not None:
        b = backend[-frames:]
        ax = axes[1][0]
        stages = {
            "receive": b["received_ns"] - b["first_byte_ns"],
            "preprocess": b["pre_ns"],
            "engine (host)": b["engine_ns"],
            "map back": b["post_ns"],
            "served": b["replied_ns"] - b["received_ns"],
        }
        if (b["device_ns"] >= 0).any():
            stages["engine (GPU)"] = np.where(b["device_ns"] >= 0, b["device_ns"], 0)
        for name, ns in stages.items():
            ms = ns / 1e6
            ax.plot(ms, lw=0.6, label=f"{name} (p50 {np.median(ms):.3f}, p99 {np.percentile(ms, 99):.3f})")
        ax.set_ylabel("ms")
        ax.set_xlabel("frame (backend)")
        ax.set_title("backend stages per frame")
        ax.legend(loc="upper right", fontsize=8)
        if panels == 3:
            ax = axes[2][0]
            ax.plot(b["sm_mhz"], lw=0.7, color="tab:red", label="GPU SM clock (MHz)")
            ax.plot(
                b["involuntary_switches"] * 100, lw=0.7, color="tab:gray", label="involuntary switches x100"
            )
            ax.set_xlabel("frame (backend)")
            ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _stage_lines(title: str, stages: dict[str, dict[str, float]], n: int) -> list[str]:
    lines = [f"{title:<16} {'p50':>8} {'p99':>8} {'max':>8}  (ms, {n} frames)"]
    lines += [
        f"{k:<16} {v['p50']:>8.3f} {v['p99']:>8.3f} {v['max']:>8.3f}" for k, v in stages.items() if v.get("n")
    ]
    return lines


def telemetry_table(edge: np.ndarray | None, backend: np.ndarray | None = None) -> str:
    lines: list[str] = []
    if edge is not None:
        lines += _stage_lines("edge stage", stage_summary(edge), edge.size)
    if backend is not None:
        lines += ([""] if lines else []) + _stage_lines(
            "backend stage", backend_summary(backend), backend.size
        )
        slow = slow_frames(backend)
        lines.append("")
        lines.append(
            f"{'frames':<16} {'n':>6} {'served':>8} {'engine':>8} {'GPU':>8} {'invol.sw':>9} {'vol.sw':>8} "
            f"{'minflt':>7} {'SM MHz':>7}"
        )
        for name in ("slow", "others"):
            g = slow[name]
            if g["frames"]:
                lines.append(
                    f"{name + ' (>2x p50)' if name == 'slow' else name:<16} {g['frames']:>6} {g['served_p50_ms']:>8.3f} "
                    f"{g['engine_p50_ms']:>8.3f} {g.get('device_p50_ms', float('nan')):>8.3f} "
                    f"{g['involuntary_switches']:>9.2f} {g['voluntary_switches']:>8.2f} {g['minor_faults']:>7.2f} "
                    f"{g['sm_mhz']:>7.0f}"
                )
        legs = round_trip_legs(edge, backend) if edge is not None else None
        if legs is not None:
            lines += ["", *_stage_lines("round trip legs", legs, int(legs["total"]["n"]))]
        if "clusters" in slow:
            c = slow["clusters"]
            lines.append(
                f"slow frames come in {c['count']} clusters, {c['median_gap_s']:.2f} s apart (median)"
            )
    return "\n".join(lines)
