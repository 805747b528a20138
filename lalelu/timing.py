"""Latency statistics and a preallocated telemetry ring shared by the apps and the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

import numpy as np

NS_PER_MS = 1_000_000


def summarize_ns(samples_ns: np.ndarray | Sequence[int]) -> dict[str, float]:
    """Mean, std, min, max and percentiles in milliseconds of a set of nanosecond durations."""
    a = np.asarray(samples_ns, dtype=np.float64) / NS_PER_MS
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "p99.9": float(np.percentile(a, 99.9)),
    }


# One row per frame; every time is CLOCK_MONOTONIC ns of the machine that took it, durations are ns.
TELEMETRY_DTYPE = np.dtype(
    [
        ("seq", np.int64),
        ("capture_ns", np.int64),  # camera/sensor timestamp of the frame (edge clock)
        ("sent_ns", np.int64),  # frame handed to the socket or the local engine (edge clock)
        ("pose_ns", np.int64),  # pose available on the edge (edge clock)
        ("backend_queue_ns", np.int64),  # backend: received -> inference start
        ("backend_infer_ns", np.int64),  # backend: preprocessing + model
        ("backend_total_ns", np.int64),  # backend: received -> reply sent
        ("local", np.int8),  # 1 when inferred on the edge itself
    ]
)


class TelemetryRing:
    """Fixed-size ring of per-frame records; writing a row allocates nothing."""

    def __init__(self, capacity: int = 4096) -> None:
        self.rows = np.zeros(capacity, dtype=TELEMETRY_DTYPE)
        # np.zeros gets untouched pages from the kernel: each would fault (and grow RSS) the first time a
        # frame's row lands on it, in the hot loop, for minutes. Touch them all now.
        self.rows.fill(0)
        self.capacity = capacity
        self.count = 0  # rows ever written

    def next_row(self) -> np.void:
        row = self.rows[self.count % self.capacity]
        self.count += 1
        return row

    def slot(self, seq: int) -> np.void:
        """The row of frame `seq` (frames numbered from 0): lets two threads fill one frame's row."""
        self.count = max(self.count, seq + 1)
        return self.rows[seq % self.capacity]

    def rows_between(self, first_seq: int, end_seq: int) -> np.ndarray:
        """Rows of frames first_seq..end_seq-1 still in the ring (a copy)."""
        first_seq = max(first_seq, end_seq - self.capacity, 0)
        return self.rows[np.arange(first_seq, end_seq) % self.capacity]

    def answered_between(self, first_seq: int, end_seq: int) -> np.ndarray:
        """Rows of frames first_seq..end_seq-1 that got a pose (a copy). A slot whose frame was never
        written (dropped at capture) still holds an older frame's row: its seq tells, and it is left out."""
        rows = self.rows_between(first_seq, end_seq)
        seqs = np.arange(end_seq - len(rows), end_seq)
        return rows[(rows["seq"] == seqs) & (rows["pose_ns"] > 0)]

    def recent(self) -> np.ndarray:
        """The rows still in the ring, oldest first (a copy)."""
        return self.rows_between(0, self.count)


def write_jsonl(rows: np.ndarray, fh: IO[str]) -> None:
    """Telemetry rows as JSON lines, one object per frame (what `lalelu bench --from-telemetry` reads)."""
    for r in rows:
        fh.write(json.dumps({name: int(r[name]) for name in TELEMETRY_DTYPE.names or ()}) + "\n")
    fh.flush()


def stage_summary(rows: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-stage latency of telemetry rows: total (capture -> pose), inference, and the overhead rest."""
    total = rows["pose_ns"] - rows["capture_ns"]
    infer = rows["backend_infer_ns"]
    return {
        "total": summarize_ns(total),
        "capture_to_sent": summarize_ns(rows["sent_ns"] - rows["capture_ns"]),
        "round_trip": summarize_ns(rows["pose_ns"] - rows["sent_ns"]),
        "backend_queue": summarize_ns(rows["backend_queue_ns"]),
        "inference": summarize_ns(infer),
        "overhead": summarize_ns(total - infer),
    }
