"""Where the edge's poses come from, and the switching between the two sources (FailoverPoses): the
backend while it answers, the local engine while it is away or when there is none; and finding a lost
backend again (Reconnector): connect with backoff in the background, prove it answers, hand it over.

The capture loop never waits for the search; it keeps inferring locally and takes the socket when one is
ready.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from lalelu.config import Config, load_link_key
from lalelu.edge.modes import EdgeMode
from lalelu.edge.poses import BackendPoses, Deliver, LocalPoses, PoseSource
from lalelu.edge.telemetry import EdgeCounters, FrameTelemetry
from lalelu.engine import engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.runtime.realtime import leave_realtime
from lalelu.wire.link import BackendDistrusted, BackendUnavailable, answered, connect_backend
from lalelu.wire.protocol import ProtocolError

log = logging.getLogger("lalelu.edge")
LIE_HOLD_S = 30.0  # after a backend's first reply not believed, it is asked again this much later
LIE_HOLD_MAX_S = 600.0  # doubling with each lie, up to this


def distrust_hold_s(lies: int) -> float:
    """How long the edge waits before asking a backend again after its `lies`-th lie (1, 2, ...)."""
    return min(LIE_HOLD_S * 2 ** min(lies - 1, 20), LIE_HOLD_MAX_S)


class FailoverPoses:
    """One `submit` for the loop, whoever infers: the backend (REMOTE), the local engine while the backend
    is lost and searched for (RECONNECTING), or the local engine alone (LOCAL, no backend configured). A
    frame whose backend fails under it is inferred locally, not lost; the notes are silenced first
    (`on_lost`), since no note-off of the lost backend's poses would come."""

    def __init__(
        self,
        cfg: Config,
        fmt: PixelFormat,
        width: int,
        height: int,
        deliver: Deliver,
        on_lost: Callable[[], None],
        counters: EdgeCounters,
        telemetry: FrameTelemetry,
        keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._geometry = (fmt, width, height)
        self._deliver, self._on_lost, self._keepalive = deliver, on_lost, keepalive
        self.counters, self._telemetry = counters, telemetry
        self._poses: PoseSource | None = None
        self._local: LocalPoses | None = None
        self._reconnector: Reconnector | None = None
        self._local_since = 0.0

    def open(self) -> None:
        """Load the local engine (where it may be needed) and connect to the backend (where there is one):
        an unreachable backend starts the search, unless there is no local engine to play on."""
        e = self.cfg.edge
        if not e.backend or e.fallback:
            estimator = PoseEstimator(engine_from_config(self.cfg.engine))
            self._local = LocalPoses(estimator, *self._geometry, self._deliver)
            self._poses = self._local
        if not e.backend:
            assert self._local is not None
            log.info("no backend configured: inferring locally with %s", self._local.estimator.engine.name)
            return
        key = load_link_key(e.key_file, "edge")
        self._reconnector = Reconnector(
            e.backend,
            *self._geometry,
            e.connect_timeout_s,
            max_delay_s=e.reconnect_max_s,
            key=key,
            source=e.source_address,
        )
        try:
            self._poses = self._backend(
                connect_backend(e.backend, e.connect_timeout_s, key, e.source_address)
            )
            log.info("sending frames to the backend at %s", e.backend)
        except BackendUnavailable as exc:
            if self._local is None:
                raise
            log.warning("%s; inferring locally until it answers", exc)
            self._local_since = time.monotonic()
            self._reconnector.start()

    @property
    def remote(self) -> bool:
        return self._poses is not None and self._poses.remote

    @property
    def mode(self) -> EdgeMode:
        if not self.cfg.edge.backend:
            return EdgeMode.LOCAL
        return EdgeMode.REMOTE if self.remote else EdgeMode.RECONNECTING

    def submit(self, seq: int, capture_ns: int, frame: np.ndarray) -> bool:
        """Infer frame `seq` where the poses come from now; False when it was skipped (the backend is
        behind). BackendUnavailable when the backend is lost and there is no local engine."""
        poses = self._poses
        assert poses is not None, "open() first"
        self._telemetry.sent(seq, capture_ns, local=not poses.remote)
        try:
            sent = poses.submit(seq, capture_ns, frame)
        except BackendUnavailable as exc:
            self._to_local(str(exc), lied=isinstance(exc, BackendDistrusted))
            return self.submit(seq, capture_ns, frame)  # this frame is not lost: it is the first local one
        if not poses.remote:
            self.counters.frames_local += 1
            sock = self._reconnector.take() if self._reconnector is not None else None
            if sock is not None:
                self._to_backend(sock)
        return sent

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the search and the current source, waiting up to wait_s for the frames in flight."""
        if self._reconnector is not None:
            self._reconnector.close()
        if self._poses is not None:
            self._poses.close(wait_s=wait_s)

    def _backend(self, sock: socket.socket) -> BackendPoses:
        return BackendPoses(sock, self.cfg.edge, *self._geometry, self._deliver, keepalive=self._keepalive)

    def _to_local(self, why: str, lied: bool = False) -> None:
        """The backend is gone: end its link, silence the notes, play on with local poses, look for it
        (after a hold that doubles with each lie: a backend that answers the probe honestly and lies
        after is not taken back at once, again and again)."""
        assert self._poses is not None
        lost = self._poses.close()  # no late reply reaches the consumer after this
        self._poses = self._local
        c = self.counters
        c.lost_in_flight += lost
        c.backend_losses += 1
        self._on_lost()
        self._local_since = time.monotonic()
        if self._local is None:
            raise BackendUnavailable(f"{why}; [edge] fallback = false, so the edge stops here")
        hold_s = 0.0
        if lied:
            c.lies += 1
            hold_s = distrust_hold_s(c.lies)
        log.warning(
            "backend lost (%s): %d frames in flight lost; inferring locally with %s, reconnecting%s",
            why,
            lost,
            self._local.estimator.engine.name,
            f" in {hold_s:g} s (it lied {c.lies} times)" if hold_s else "",
        )
        assert self._reconnector is not None
        self._reconnector.start(hold_s)

    def _to_backend(self, sock: socket.socket) -> None:
        self._poses = self._backend(sock)
        self.counters.reconnects += 1
        log.warning(
            "backend %s answers again after %.2f s: sending frames to it (%d frames inferred locally so far)",
            self.cfg.edge.backend,
            time.monotonic() - self._local_since,
            self.counters.frames_local,
        )


class Reconnector:
    def __init__(
        self,
        address: str,
        fmt: PixelFormat,
        width: int,
        height: int,
        connect_timeout_s: float,
        first_delay_s: float = 0.25,
        max_delay_s: float = 4.0,
        key: bytes = b"",
        source: str = "",
    ) -> None:
        self.address = address
        self._key = key
        self._source = source
        self._probe = (fmt, width, height, bytes(FrameFormat(fmt, width, height).nbytes))
        self._timeout_s = connect_timeout_s
        self._first_delay_s, self._max_delay_s = first_delay_s, max_delay_s
        self._stop = threading.Event()
        self._ready: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.last_error = ""
        self._hold_s = 0.0

    def start(self, hold_s: float = 0.0) -> None:
        """Look for the backend in the background; the first attempt after `hold_s`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._hold_s = hold_s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lalelu-reconnect", daemon=True)
        self._thread.start()

    def take(self) -> socket.socket | None:
        """A backend that has just answered a probe frame, or None (yet)."""
        sock, self._ready = self._ready, None
        return sock

    def _try_once(self) -> socket.socket:
        fmt, width, height, payload = self._probe
        sock = connect_backend(self.address, self._timeout_s, self._key, self._source)
        try:
            # A listening socket is not enough (a stopped process still accepts): it must answer a frame.
            sock.settimeout(self._timeout_s)
            answered(sock, 0, fmt, width, height, payload, np.zeros((NUM_KEYPOINTS, 3), np.float32))
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        leave_realtime()  # never competes with the frame loop for its CPU
        if self._hold_s and self._stop.wait(self._hold_s):
            return
        delay = self._first_delay_s
        while not self._stop.is_set():
            try:
                self._ready = self._try_once()
                return
            except (BackendUnavailable, OSError, ProtocolError) as exc:
                if str(exc) != self.last_error:  # one line per kind of failure, not per attempt
                    log.info(
                        "backend %s not back yet: %s (retrying, up to every %g s)",
                        self.address,
                        exc,
                        self._max_delay_s,
                    )
                self.last_error = str(exc)
            self._stop.wait(delay)
            delay = min(delay * 2, self._max_delay_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s + 1)
        sock = self.take()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
