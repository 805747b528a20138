"""Latency statistics and a preallocated telemetry ring shared by the apps and the benchmarks."""

from __future__ import annotations

import io
import json
import time
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


# One row per frame the backend served; times are the backend's CLOCK_MONOTONIC ns. The counts are what
# happened to the serving thread during this frame (first byte to reply): what explains a slow one.
BACKEND_TELEMETRY_DTYPE = np.dtype(
    [
        ("seq", np.int64),
        ("capture_ns", np.int64),  # the frame's camera timestamp (edge clock), to join with the edge's rows
        ("first_byte_ns", np.int64),  # the frame's first byte read from the socket
        ("received_ns", np.int64),  # its last byte read
        ("pre_ns", np.int64),  # duration: colour conversion + letterbox into the engine's input
        ("engine_ns", np.int64),  # duration: the engine as the host waits for it
        ("device_ns", np.int64),  # duration: the engine's GPU work (CUDA events); -1 where not measured
        ("post_ns", np.int64),  # duration: keypoints mapped back to frame pixels
        ("replied_ns", np.int64),  # the reply handed to the socket
        ("involuntary_switches", np.int32),  # preempted (another thread or an interrupt took the CPU)
        ("voluntary_switches", np.int32),  # blocked (waiting for the GPU, the socket)
        ("minor_faults", np.int32),
        ("major_faults", np.int32),
        ("sm_mhz", np.int32),  # the GPU's SM clock, sampled ([backend] gpu_clock_period_ms); 0: none
        ("batch", np.int32),  # frames inferred in the same engine call (a band's edges); stage times are its
    ]
)


class TelemetryRing:
    """Fixed-size ring of per-frame records; writing a row allocates nothing."""

    def __init__(self, capacity: int = 4096, dtype: np.dtype = TELEMETRY_DTYPE) -> None:
        self.rows = np.zeros(capacity, dtype=dtype)
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
    """Telemetry rows as JSON lines, one object per frame (what `lalelu bench --from-telemetry` reads).
    Run from a helper thread, it hands the interpreter lock back every 16 rows (see reporter.py)."""
    names = rows.dtype.names or ()
    for i, r in enumerate(rows.tolist()):
        fh.write(json.dumps(dict(zip(names, r, strict=True))) + "\n")
        if i % 16 == 15:
            time.sleep(0)  # releases the lock: a real-time thread waiting for it runs now
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


def frames_per_call(batch: np.ndarray) -> float:
    """Mean frames per engine call from the backend rows' `batch` column (a call of n frames left n rows,
    each saying n); 0.0 for none."""
    batch = batch[batch > 0]
    return float(batch.size / (1.0 / batch).sum()) if batch.size else 0.0


def backend_summary(rows: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-stage latency of backend telemetry rows (BACKEND_TELEMETRY_DTYPE)."""
    return {
        "receive": summarize_ns(rows["received_ns"] - rows["first_byte_ns"]),
        "preprocess": summarize_ns(rows["pre_ns"]),
        "engine": summarize_ns(rows["engine_ns"]),
        "engine_device": summarize_ns(rows["device_ns"][rows["device_ns"] >= 0]),
        "map_back": summarize_ns(rows["post_ns"]),
        "served": summarize_ns(rows["replied_ns"] - rows["received_ns"]),
    }


def warm_up_reports() -> None:
    """Run the report path once at start-up. Its first run costs tens of milliseconds (np.percentile
    imports numpy.ma on first use), and a helper thread doing that holds the interpreter lock long enough
    to stall the real-time loop: measured on the H100 demo as one 42-54 ms stall at the first report."""
    edge, backend = np.zeros(8, TELEMETRY_DTYPE), np.zeros(8, BACKEND_TELEMETRY_DTYPE)
    edge["pose_ns"] = backend["replied_ns"] = np.arange(8)
    stage_summary(edge)
    backend_summary(backend)
    for rows in (edge, backend):
        write_jsonl(rows, io.StringIO())
