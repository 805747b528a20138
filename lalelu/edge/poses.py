"""Where the edge's poses come from: the backend over its link, or the local engine, behind one interface.

Both take each frame with `submit` and hand its pose to one `deliver` callable of the loop's: the local
engine at once, on the loop's thread; the backend from the link's receiver thread as its replies come.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

import numpy as np

from lalelu.clock import now_ns
from lalelu.config import EdgeConfig
from lalelu.engine.estimator import PoseEstimator
from lalelu.frames import PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.wire.link import BackendLink
from lalelu.wire.protocol import Reply, Status

# deliver(seq, keypoints or None when the engine failed on the frame, queue_ns, infer_ns, served_ns):
# the times are the engine's side of the frame, the backend's own clock for a remote pose
Deliver = Callable[[int, np.ndarray | None, int, int, int], None]


class PoseSource(Protocol):
    remote: bool

    def submit(self, seq: int, capture_ns: int, frame: np.ndarray) -> bool:
        """Infer one frame; False when it was skipped. BackendUnavailable when the backend is gone."""
        ...

    def close(self, wait_s: float = 0.0) -> int:
        """Wait up to wait_s for the frames in flight, then stop; how many were never answered."""
        ...


class LocalPoses:
    """The edge's own engine: the pose is delivered before `submit` returns."""

    remote = False

    def __init__(
        self, estimator: PoseEstimator, fmt: PixelFormat, width: int, height: int, deliver: Deliver
    ) -> None:
        self.estimator = estimator
        self._geometry = (fmt, width, height)
        self._deliver = deliver
        self._keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)

    def submit(self, seq: int, capture_ns: int, frame: np.ndarray) -> bool:
        t0 = now_ns()
        self.estimator.estimate(frame, *self._geometry, self._keypoints)
        took = now_ns() - t0
        self._deliver(seq, self._keypoints, 0, took, took)
        return True

    def close(self, wait_s: float = 0.0) -> int:
        return 0  # the engine stays loaded: it is the fallback for every later backend loss


class BackendPoses:
    """One connection to the backend: frames out on the loop's thread, poses in on the link's receiver."""

    remote = True

    def __init__(
        self,
        sock: socket.socket,
        cfg: EdgeConfig,
        fmt: PixelFormat,
        width: int,
        height: int,
        deliver: Deliver,
        keepalive: Callable[[], None] | None = None,
    ) -> None:
        self._geometry = (fmt, width, height)
        self._deliver = deliver
        self.link = BackendLink(
            sock,
            cfg.backend,
            self._on_reply,
            cfg.max_in_flight,
            cfg.reply_timeout_s,
            cfg.latency_budget_ms,
            keepalive=keepalive,
            busy_poll_ms=cfg.busy_poll_ms,
        )

    def submit(self, seq: int, capture_ns: int, frame: np.ndarray) -> bool:
        return self.link.send(seq, capture_ns, *self._geometry, frame)

    def _on_reply(self, reply: Reply) -> None:
        self._deliver(
            reply.seq,
            reply.keypoints if reply.status == Status.OK else None,
            reply.infer_start_ns - reply.recv_ns,
            reply.infer_end_ns - reply.infer_start_ns,
            reply.send_ns - reply.recv_ns,
        )

    def close(self, wait_s: float = 0.0) -> int:
        if wait_s:
            self.link.in_flight_done(wait_s)
        self.link.close()  # joins its receiver: no late reply is delivered after this
        return self.link.sent - self.link.replies
