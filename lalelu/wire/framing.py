"""The backend's end of the wire, one connection at a time: its key exchange (KeyExchange: the edge's
hello, the challenge, the edge's proof) and its incoming frames (FrameReader: read as they arrive, without
copies, into preallocated buffers, the header's, then the frame buffer the engine reads, made again only
when the geometry changes; each header validated before a payload byte is read). What to do about what
arrived (admit, batch, infer, answer, drop) is the server's; these only say what arrived.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable

import numpy as np

from lalelu.clock import now_ns
from lalelu.frames import PixelFormat
from lalelu.wire.protocol import (
    FRAME_HEADER,
    FRAME_MAGIC,
    HELLO,
    PROOF,
    FrameHeader,
    ProtocolError,
    encode_challenge,
    parse_frame_header,
    parse_hello,
    proof_is_valid,
)

FrameBuffer = Callable[[PixelFormat, int, int], np.ndarray]  # the engine's buffer for a geometry
DRAINED = -1


def receive(sock: socket.socket, into: memoryview, closed: str) -> tuple[int, str]:
    """(bytes read, ""); (DRAINED, "") when the socket has nothing now; (0, why) when the peer closed
    (`closed`) or the socket failed."""
    try:
        n = sock.recv_into(into)
    except BlockingIOError:
        return DRAINED, ""
    except OSError as exc:
        return 0, str(exc)
    return n, "" if n else closed


class Read(enum.Enum):
    MORE = enum.auto()  # the socket is drained and no frame is complete yet
    FRAME = enum.auto()  # a frame is complete: its header in `last`, its pixels in `pixels`
    REJECTED = enum.auto()  # a frame's header is bad (`error`) but the stream stays framed: read on
    SKIPPED = enum.auto()  # the rejected frame's payload is read past: answer it (`error.seq`)
    UNFRAMEABLE = enum.auto()  # not a stream of lalelu frames (bad magic, version, length): `error`
    CLOSED = enum.auto()  # the peer closed, or the socket failed: `why`


class FrameReader:
    def __init__(self, max_payload: int, frame_buffer: FrameBuffer) -> None:
        self.max_payload = max_payload
        self._frame_buffer = frame_buffer
        self.header = bytearray(FRAME_HEADER.size)
        self.got = 0  # bytes of the header or payload being read
        self.frame: FrameHeader | None = None  # the header whose payload is being read
        self.payload = memoryview(bytearray())  # flat bytes being read into
        self.pixels: np.ndarray | None = (
            None  # the frame buffer `payload` views, shaped; None while discarding
        )
        self.geometry: tuple[int, int, int] = (0, 0, 0)  # (format, width, height) `pixels` was made for
        self.discard = False  # reading the payload of a rejected frame only to stay framed
        self.last: FrameHeader | None = None  # the frame completed last
        self.error: ProtocolError | None = None  # why the last frame was rejected, or the stream is not one
        self.why = ""  # why the connection ended
        self.last_byte_ns = now_ns()  # connected or last read: what idleness counts from
        self.begun_ns = 0  # when the first byte of the frame being read arrived; 0 between frames
        self.first_byte_ns = 0  # of the frame completed last
        self.recv_ns = 0  # when the frame completed last was complete

    def read(self, sock: socket.socket) -> Read:
        """Read until the socket is drained or one frame is complete (a connection with frames queued must
        not hold the server's loop: it goes back to select after each)."""
        while True:
            if self.discard and self.got == len(self.payload):
                return self._complete()  # a rejected frame without a payload
            reading_header = self.frame is None and not self.discard
            into = memoryview(self.header)[self.got :] if reading_header else self.payload[self.got :]
            n, self.why = receive(sock, into, "closed by the edge")
            if n <= 0:
                return Read.MORE if n == DRAINED else Read.CLOSED
            self.last_byte_ns = now_ns()
            if not self.begun_ns:
                self.begun_ns = self.last_byte_ns
            self.got += n
            if reading_header:
                if self.got < FRAME_HEADER.size:
                    continue
                got = self._on_header()
                if got is not Read.MORE:
                    return got
            elif self.got == len(self.payload):
                return self._complete()

    def _on_header(self) -> Read:
        """MORE: read the payload next (into the frame buffer, or past it for a rejected frame)."""
        self.got = 0
        try:
            frame = parse_frame_header(memoryview(self.header), self.max_payload)
        except ProtocolError as err:
            # kept without its traceback: that would hold this reader (and its buffers) in a cycle, and the
            # backend runs with the cycle collector frozen
            self.error = err.with_traceback(None)
            if err.fatal:
                return Read.UNFRAMEABLE
            self.discard = True
            self.frame = None
            if len(self.payload) != err.payload_len or self.pixels is not None:
                self.payload, self.pixels, self.geometry = (
                    memoryview(bytearray(err.payload_len)),
                    None,
                    (0, 0, 0),
                )
            return Read.REJECTED
        self.frame = frame
        geometry = (int(frame.pixel_format), frame.width, frame.height)
        if self.pixels is None or self.geometry != geometry:
            # once per geometry and connection, bounded by max_payload; pinned memory for a GPU engine
            self.pixels = self._frame_buffer(frame.pixel_format, frame.width, frame.height)
            self.payload, self.geometry = self.pixels.reshape(-1).data, geometry
        return Read.MORE

    def _complete(self) -> Read:
        self.recv_ns = now_ns()
        self.first_byte_ns, self.begun_ns = self.begun_ns, 0
        self.got = 0
        if self.discard:
            self.discard = False
            return Read.SKIPPED
        self.last, self.frame = self.frame, None
        return Read.FRAME


class Proof(enum.Enum):
    MORE = enum.auto()  # the socket is drained, the exchange not finished
    CHALLENGE = enum.auto()  # the hello is in: send `challenge`, then read on
    PROVEN = enum.auto()  # the edge proved the key: its frames follow
    KEYLESS = enum.auto()  # a frame came instead of a hello (an edge without the key): `keyless_seq`
    BAD_HELLO = enum.auto()  # not a hello: `error`
    WRONG_KEY = enum.auto()  # a proof that does not check out
    CLOSED = enum.auto()  # the peer closed, or the socket failed: `why`


class KeyExchange:
    """The backend's side of the link key exchange on one connection (protocol.py says why it is safe)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._message = bytearray(HELLO.size)  # the next message's bytes: the hello, then the proof
        self._got = 0
        self.edge_nonce = b""
        self.backend_nonce = b""
        self.challenge = b""
        self.keyless_seq = 0
        self.error: ProtocolError | None = None
        self.why = ""

    def read(self, sock: socket.socket) -> Proof:
        while True:
            into = memoryview(self._message)[self._got :]
            n, self.why = receive(sock, into, "closed by the edge during the key exchange")
            if n <= 0:
                return Proof.MORE if n == DRAINED else Proof.CLOSED
            self._got += n
            if self._got >= FRAME_HEADER.size and self._message[:4] == FRAME_MAGIC:
                self.keyless_seq = FRAME_HEADER.unpack_from(self._message)[4]
                return Proof.KEYLESS
            if self._got < len(self._message):
                continue
            self._got = 0
            if not self.edge_nonce:
                try:
                    self.edge_nonce = parse_hello(self._message)
                except ProtocolError as err:
                    self.error = err.with_traceback(None)
                    return Proof.BAD_HELLO
                self.challenge, self.backend_nonce = encode_challenge(self.key, self.edge_nonce)
                self._message = bytearray(PROOF.size)
                return Proof.CHALLENGE
            if not proof_is_valid(self.key, self.edge_nonce, self.backend_nonce, self._message):
                return Proof.WRONG_KEY
            return Proof.PROVEN
