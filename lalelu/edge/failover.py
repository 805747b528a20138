"""Finding a lost backend again: connect with backoff in the background, prove it answers, hand it over.

The capture loop never waits for this; it keeps inferring locally and takes the socket when one is ready.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import numpy as np

from lalelu.clock import now_ns
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.runtime.realtime import leave_realtime
from lalelu.wire.link import BackendUnavailable, connect_backend
from lalelu.wire.protocol import (
    NEEDS_KEY,
    ProtocolError,
    Status,
    encode_frame_header,
    reply_problem,
    round_trip,
)

log = logging.getLogger("lalelu.edge")


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
            header = encode_frame_header(0, now_ns(), fmt, width, height, len(payload))
            reply = round_trip(sock, header, payload, np.zeros((NUM_KEYPOINTS, 3), np.float32))
            if reply.status == Status.UNAUTHENTICATED:
                raise BackendUnavailable(NEEDS_KEY)
            if reply.status != Status.OK:
                raise BackendUnavailable(f"the backend answered the probe frame with {reply.status.name}")
            problem = reply_problem(reply, 0, width, height)
            if problem:
                raise BackendUnavailable(
                    f"the backend's answer to the probe frame is not believed: {problem}"
                )
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
