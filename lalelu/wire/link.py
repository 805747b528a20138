"""The edge's connection to the backend: frames out on the capture thread, replies in on a receiver thread."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from lalelu.clock import now_ns
from lalelu.errors import RunFailed
from lalelu.frames import PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.wire.protocol import (
    NEEDS_KEY,
    REPLY_SIZE,
    ProtocolError,
    Reply,
    Status,
    authenticate,
    encode_frame_header,
    parse_reply_into,
    reply_problem,
    round_trip,
    split_address,
)

log = logging.getLogger("lalelu.edge")


class BackendUnavailable(RunFailed):
    pass


class BackendDistrusted(BackendUnavailable):
    """The backend answered with a reply not to be believed: left like a lost one, asked again later."""


def connect_backend(address: str, timeout_s: float, key: bytes = b"", source: str = "") -> socket.socket:
    """A connected TCP socket to the backend (blocking, no delay), or BackendUnavailable. With a link
    key the backend must prove it, and this edge proves it back, before the socket is returned.
    `source`: the local address to connect from ([edge] source_address); "" lets the system choose."""
    try:
        host_port = split_address(address)
        if host_port is None:
            raise OSError(f"{address!r} is not HOST:PORT")
        sock = socket.create_connection(
            host_port, timeout=timeout_s, source_address=(source, 0) if source else None
        )
    except UnicodeError as exc:  # a host name IDNA cannot encode (empty labels, ...)
        raise BackendUnavailable(
            f"[edge] backend = {address!r}: the host is not a valid name ({exc}); give HOST:PORT"
        ) from exc
    except OSError as exc:
        if source and exc.errno == errno.EADDRNOTAVAIL:
            raise BackendUnavailable(
                f"[edge] source_address = {source!r} is not an address of this machine: set one of its own "
                "(`ip -brief address`), or leave it empty"
            ) from exc
        raise BackendUnavailable(
            f"cannot reach the backend at {address} ({exc.strerror or exc}): is `lalelu backend` running "
            "there and is [edge] backend right?"
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if key:
        try:
            authenticate(sock, key)
        except (OSError, ProtocolError) as exc:
            sock.close()
            raise BackendUnavailable(f"the backend at {address} is not trusted: {exc}") from exc
    return sock


def answered(
    sock: socket.socket, seq: int, fmt: PixelFormat, width: int, height: int, payload: bytes, out: np.ndarray
) -> Reply:
    """One frame's round trip to a backend that must answer it with a pose to believe (the reconnector's
    probe, `lalelu check`): BackendUnavailable, naming why, when it needs the key, refuses the frame
    (BUSY: this host sends more than its share), or answers what cannot be a pose of it."""
    header = encode_frame_header(seq, now_ns(), fmt, width, height, len(payload))
    reply = round_trip(sock, header, payload, out)
    if reply.status == Status.UNAUTHENTICATED:
        raise BackendUnavailable(NEEDS_KEY)
    if reply.status == Status.BUSY:
        raise BackendUnavailable(
            "it answered BUSY: this host sends more than its [backend] max_fps_per_edge (another edge or "
            "check from this address?)"
        )
    if reply.status != Status.OK:
        raise BackendUnavailable(f"the backend answered the frame with {reply.status.name}")
    problem = reply_problem(reply, seq, width, height)
    if problem:
        raise BackendUnavailable(f"the backend's answer is not believed: {problem}")
    return reply


class BackendLink:
    """One connection's life: `send` raises BackendUnavailable once the backend is gone or silent."""

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        on_reply: Callable[[Reply], None],
        max_in_flight: int,
        reply_timeout_s: float,
        latency_budget_ms: float = 0.0,
        keepalive: Callable[[], None] | None = None,
        busy_poll_ms: float = 0.0,
    ) -> None:
        self.sock = sock
        self._keepalive = keepalive
        self.sock.settimeout(None)
        self.address = address
        self._on_reply = on_reply
        self._slots = threading.Semaphore(max_in_flight)
        self._reply_timeout_s = reply_timeout_s
        self._budget_ns = int(latency_budget_ms * 1e6)
        self._service_ns = 0  # the backend's time per frame, smoothed (receiver thread writes it)
        self._sent_at = [0] * max_in_flight  # monotonic ns of each frame in flight, by send count
        self._sent_seq = [0] * max_in_flight  # and its sequence number: the reply it must get
        self._frame_size = (1, 1)  # width, height of the frames sent
        self._last_reply_ns = 0  # monotonic ns of the last reply (receiver thread writes it)
        self.sent = 0
        self.replies = 0
        self.skipped = 0
        self.error: str = ""
        self.lied = False  # the error is a reply not believed
        self._closed = False
        self._poll_ns = int(busy_poll_ms * 1e6)
        self._sending = threading.Event()  # set by each send: wakes a busy-polling receiver
        self._rx = threading.Thread(target=self._receive, name="lalelu-rx", daemon=True)
        self._rx.start()

    def send(
        self, seq: int, capture_ns: int, fmt: PixelFormat, width: int, height: int, frame: np.ndarray
    ) -> bool:
        """Send a frame; False when it was skipped for the latency budget (the next one will go)."""
        if self.error:
            self._raise_error()
        if self._budget_ns and self._over_budget():
            self.skipped += 1
            return False
        # A full pipe waits for a reply, but only so long: a hung backend must not stall the camera loop.
        # With a budget, a frame reaches here only when a slot is free.
        if not self._free_slot():
            raise BackendUnavailable(
                f"the backend at {self.address} answered nothing for {self._reply_timeout_s:g} s"
            )
        if self.error:
            self._raise_error()
        header = encode_frame_header(seq, capture_ns, fmt, width, height, frame.nbytes)
        self._sent_at[self.sent % len(self._sent_at)] = time.monotonic_ns()
        self._sent_seq[self.sent % len(self._sent_seq)] = seq
        self._frame_size = (width, height)
        try:
            self.sock.sendmsg([header, frame.data.cast("B")])
        except OSError as exc:
            raise BackendUnavailable(f"sending to the backend at {self.address} failed: {exc}") from exc
        self.sent += 1
        if self._poll_ns:
            self._sending.set()
        return True

    def _raise_error(self) -> None:
        kind = BackendDistrusted if self.lied else BackendUnavailable
        raise kind(f"the backend at {self.address} went away: {self.error}")

    def _free_slot(self) -> bool:
        """Wait up to reply_timeout_s for a frame slot, keeping the caller's watchdog fed meanwhile."""
        if self._slots.acquire(blocking=False):
            return True
        deadline = time.monotonic() + self._reply_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._slots.acquire(timeout=min(left, 0.5)):
                return True
            if self._keepalive is not None:
                self._keepalive()

    def _over_budget(self) -> bool:
        """Would a frame sent now wait past the budget behind those in flight? Before the first reply the
        backend's pace is unknown: one frame at a time. A backend that answered nothing for reply_timeout_s
        while frames were in flight is hung (BackendUnavailable); a slow one that keeps answering is not."""
        in_flight = self.sent - self.replies
        if in_flight <= 0:
            return False
        oldest = self._sent_at[self.replies % len(self._sent_at)]
        # The backend serves in order: it began the oldest frame when that arrived or when it sent the
        # reply before, and the rest follow at its recent pace. A frame sent now starts after them.
        started, now = max(oldest, self._last_reply_ns), time.monotonic_ns()
        if now - started >= self._reply_timeout_s * 1e9:
            raise BackendUnavailable(
                f"the backend at {self.address} answered nothing for {self._reply_timeout_s:g} s"
            )
        if in_flight >= len(self._sent_at) or not self._service_ns:
            return True
        return started + in_flight * self._service_ns - now > self._budget_ns

    def _receive(self) -> None:
        buf = bytearray(REPLY_SIZE)
        view = memoryview(buf)
        keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        try:
            while True:
                got = 0
                while got < REPLY_SIZE:
                    n = self._recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError("connection closed by the backend")
                    got += n
                reply = parse_reply_into(buf, keypoints)
                if reply.status == Status.UNAUTHENTICATED:
                    raise ProtocolError(NEEDS_KEY, fatal=True)
                problem = reply_problem(
                    reply, self._sent_seq[self.replies % len(self._sent_seq)], *self._frame_size
                )
                if problem:  # a lying or broken backend: failed over from like a lost one
                    self.lied = True
                    raise ProtocolError(f"reply not believed: {problem}", fatal=True)
                if reply.status == Status.OK:  # a BUSY or rejected frame took no inference: not service time
                    served = reply.send_ns - reply.recv_ns  # the backend's clock, a duration: no clock sync
                    self._service_ns += (served - self._service_ns) // 8 if self._service_ns else served
                self._last_reply_ns = time.monotonic_ns()
                self.replies += 1
                self._slots.release()
                self._on_reply(reply)
        except (OSError, ProtocolError) as exc:
            if not self._closed:
                self.error = str(exc)
            self._slots.release()  # wake a sender blocked on a full pipe so it sees the error

    def _recv_into(self, view: memoryview) -> int:
        """Block until bytes arrive, or with busy polling: sleep until a frame is in flight (its send wakes
        this thread, so the wake-up overlaps the backend's work), then poll for the reply without
        sleeping, for up to busy_poll_ms."""
        if not self._poll_ns:
            return self.sock.recv_into(view)
        while self.sent <= self.replies and not self._closed:
            self._sending.wait(0.5)
            self._sending.clear()
        deadline = time.monotonic_ns() + self._poll_ns
        while time.monotonic_ns() < deadline:
            try:
                return self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
        return self.sock.recv_into(view)

    def in_flight_done(self, timeout_s: float) -> bool:
        """Wait until every frame sent on this link is answered (or it failed)."""
        end = time.monotonic() + timeout_s
        while self.replies < self.sent and not self.error and time.monotonic() < end:
            time.sleep(0.001)
        return self.replies >= self.sent

    def close(self) -> None:
        """Stop receiving; once this returns no reply of this link reaches `on_reply` any more."""
        self._closed = True
        self._sending.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._rx.join(timeout=2.0)
