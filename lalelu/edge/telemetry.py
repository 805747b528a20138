"""What the edge counts and times, each written in one place: the counters of a run (one dataclass,
shared by the loop and the failover) and the per-frame rows (written only through FrameTelemetry's
methods, from the loop's thread and the link's receiver)."""

from __future__ import annotations

from dataclasses import dataclass

from lalelu.clock import now_ns
from lalelu.timing import TelemetryRing


@dataclass
class EdgeCounters:
    captured: int = 0  # frames read from the camera (its own drops are the source's `dropped`)
    received: int = 0  # replies and local poses, good or not
    bad_replies: int = 0  # replies without a pose (the engine failed on the frame)
    skipped: int = 0  # frames not sent: they would have waited past [edge] latency_budget_ms
    frames_local: int = 0  # frames the local engine inferred
    backend_losses: int = 0
    reconnects: int = 0
    lies: int = 0  # backend replies not believed, each ending a connection
    lost_in_flight: int = 0  # frames on the wire when a backend was lost

    @property
    def poses(self) -> int:
        return self.received - self.bad_replies


class FrameTelemetry(TelemetryRing):
    """The edge's rows (timing.TELEMETRY_DTYPE), one per frame, indexed by its number."""

    def sent(self, seq: int, capture_ns: int, local: bool) -> None:
        """The loop hands frame `seq` to the backend or the local engine now."""
        row = self.slot(seq)
        row["seq"], row["capture_ns"], row["local"], row["pose_ns"] = seq, capture_ns, local, 0
        row["sent_ns"] = now_ns()

    def answered(self, seq: int, queue_ns: int, infer_ns: int, served_ns: int) -> int:
        """Frame `seq`'s pose is here now, with the engine side's times; returns its capture time."""
        row = self.rows[seq % self.capacity]  # not slot(): its count is the loop's
        row["pose_ns"] = now_ns()
        row["backend_queue_ns"], row["backend_infer_ns"], row["backend_total_ns"] = (
            queue_ns,
            infer_ns,
            served_ns,
        )
        return int(row["capture_ns"])

    def infer_ns(self, seq: int) -> int:
        return int(self.rows[seq % self.capacity]["backend_infer_ns"])
