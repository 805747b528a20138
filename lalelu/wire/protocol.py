"""Edge <-> backend wire protocol: a fixed binary header, raw pixels, and a fixed-size pose reply.

All integers little-endian. No pickle, no variable-length fields other than the pixel payload,
whose length is checked against width, height and pixel format before a byte of it is read.

Frame (edge -> backend), 32-byte header then `payload_len` bytes of pixels:
    magic b"LLDF", version u16, pixel_format u8, flags u8, seq u64, capture_ns i64,
    width u16, height u16, payload_len u32
Reply (backend -> edge), 48-byte header then 17 x (x, y, score) float32 in frame pixels:
    magic b"LLDR", version u16, status u8, n_keypoints u8, seq u64,
    recv_ns i64, infer_start_ns i64, infer_end_ns i64, send_ns i64

With a pre-shared link key (both sides' `key_file`) a connection opens with a mutual challenge-response
before any frame, HMAC-SHA256 over both sides' fresh 32-byte nonces:
    edge -> backend  hello:     magic b"LLDH", version u16, 2 zero bytes, edge nonce (32)
    backend -> edge  challenge: magic b"LLDC", version u16, 2 zero bytes, backend nonce (32),
                                HMAC(key, "lalelu backend" + edge nonce + backend nonce) (32)
    edge -> backend  proof:     magic b"LLDP", version u16, 2 zero bytes,
                                HMAC(key, "lalelu edge" + backend nonce + edge nonce) (32)
Each side proves the key on the other's nonce, so neither a recorded exchange nor a reflected one passes.
A keyed backend answers a frame sent without the exchange with status UNAUTHENTICATED and closes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

import numpy as np

from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS

VERSION = 1
FRAME_MAGIC = b"LLDF"
REPLY_MAGIC = b"LLDR"
FRAME_HEADER = struct.Struct("<4sHBBQqHHI")
REPLY_HEADER = struct.Struct("<4sHBBQqqqq")
KEYPOINT_BYTES = NUM_KEYPOINTS * 3 * 4
REPLY_SIZE = REPLY_HEADER.size + KEYPOINT_BYTES
MAX_DIMENSION = 4096
DEFAULT_MAX_PAYLOAD = 1920 * 1080 * 3
HELLO_MAGIC = b"LLDH"
CHALLENGE_MAGIC = b"LLDC"
PROOF_MAGIC = b"LLDP"
NONCE_BYTES = 32
HELLO = struct.Struct("<4sH2x32s")
CHALLENGE = struct.Struct("<4sH2x32s32s")
PROOF = struct.Struct("<4sH2x32s")


class Status(enum.IntEnum):
    OK = 0
    BAD_FRAME = 1  # header parsed but the frame was rejected (size, format); the connection stays up
    ENGINE_ERROR = 2
    UNAUTHENTICATED = 3  # a keyed backend got a frame before the key exchange; it closes the connection
    BUSY = 4  # not inferred: the edge's host sent more than its share ([backend] max_fps_per_edge)


# What an edge without the key is told, wherever it meets a keyed backend (link, probe, `lalelu check`).
NEEDS_KEY = "the backend needs the link key: set [edge] key_file to a copy of its [backend] key_file"


def split_address(address: str) -> tuple[str, int] | None:
    """ "HOST:PORT" -> (host, port); None when it is not one (IPv6 hosts in brackets keep them)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


class ProtocolError(Exception):
    """A bad packet. `fatal` means the stream can no longer be framed and must be closed; a frame rejected
    while the stream stays framed carries its `seq` (for the BAD_FRAME reply) and `payload_len` (the bytes
    to skip)."""

    def __init__(self, reason: str, fatal: bool, seq: int = 0, payload_len: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.seq = seq
        self.payload_len = payload_len


@dataclass(frozen=True, slots=True)
class FrameHeader:
    seq: int
    capture_ns: int
    pixel_format: PixelFormat
    width: int
    height: int
    payload_len: int


def encode_frame_header(
    seq: int, capture_ns: int, fmt: PixelFormat, width: int, height: int, payload_len: int | None = None
) -> bytes:
    if payload_len is None:
        payload_len = FrameFormat(fmt, width, height).nbytes
    return FRAME_HEADER.pack(FRAME_MAGIC, VERSION, int(fmt), 0, seq, capture_ns, width, height, payload_len)


def parse_frame_header(
    data: bytes | bytearray | memoryview, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> FrameHeader:
    """Validate every field; raise ProtocolError with a reason a log line can carry."""
    if len(data) != FRAME_HEADER.size:
        raise ProtocolError(f"header is {len(data)} bytes, expected {FRAME_HEADER.size}", fatal=True)
    magic, version, fmt, _flags, seq, capture_ns, width, height, length = FRAME_HEADER.unpack(data)
    if magic == HELLO_MAGIC:
        raise ProtocolError(
            "an edge opened the link key exchange: give this backend the same key ([backend] key_file)",
            fatal=True,
        )
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {FRAME_MAGIC!r}): not a lalelu edge", fatal=True)
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version}, this backend speaks {VERSION}: update edge and backend together",
            fatal=True,
        )
    if length > max_payload:
        raise ProtocolError(f"payload length {length} exceeds the limit {max_payload}", fatal=True)

    def rejected(reason: str) -> ProtocolError:
        return ProtocolError(reason, fatal=False, seq=seq, payload_len=length)

    if fmt not in PixelFormat._value2member_map_:
        raise rejected(f"unknown pixel format {fmt}")
    pf = PixelFormat(fmt)
    if not (1 <= width <= MAX_DIMENSION and 1 <= height <= MAX_DIMENSION):
        raise rejected(f"frame size {width}x{height} outside 1..{MAX_DIMENSION}")
    if pf == PixelFormat.YUV420 and (width % 2 or height % 2):
        raise rejected(f"YUV420 frame size {width}x{height} must be even")
    expected = FrameFormat(pf, width, height).nbytes
    if length != expected:
        raise rejected(
            f"payload length {length} does not match {pf.name} {width}x{height} ({expected} bytes)"
        )
    if capture_ns < 0:
        raise rejected(f"negative capture timestamp {capture_ns}")
    return FrameHeader(seq, capture_ns, pf, width, height, length)


@dataclass(slots=True)
class Reply:
    status: Status
    seq: int
    recv_ns: int
    infer_start_ns: int
    infer_end_ns: int
    send_ns: int
    keypoints: np.ndarray  # (17, 3) float32: x, y in frame pixels, score


def encode_reply_into(
    buf: bytearray,
    status: Status,
    seq: int,
    recv_ns: int,
    infer_start_ns: int,
    infer_end_ns: int,
    send_ns: int,
    keypoints: np.ndarray,
) -> None:
    """Write a reply into a preallocated REPLY_SIZE buffer (no allocation on the hot path)."""
    REPLY_HEADER.pack_into(
        buf,
        0,
        REPLY_MAGIC,
        VERSION,
        int(status),
        NUM_KEYPOINTS,
        seq,
        recv_ns,
        infer_start_ns,
        infer_end_ns,
        send_ns,
    )
    np.frombuffer(buf, dtype=np.float32, count=NUM_KEYPOINTS * 3, offset=REPLY_HEADER.size)[:] = (
        keypoints.reshape(-1)
    )


def parse_reply_into(data: bytes | bytearray | memoryview, keypoints_out: np.ndarray) -> Reply:
    if len(data) != REPLY_SIZE:
        raise ProtocolError(f"reply is {len(data)} bytes, expected {REPLY_SIZE}", fatal=True)
    magic, version, status, nkp, seq, recv, t0, t1, send = REPLY_HEADER.unpack_from(data, 0)
    if magic != REPLY_MAGIC:
        raise ProtocolError(f"bad reply magic {magic!r}: is that port a lalelu backend?", fatal=True)
    if version != VERSION:
        raise ProtocolError(f"backend speaks protocol {version}, edge speaks {VERSION}", fatal=True)
    if nkp != NUM_KEYPOINTS or status not in Status._value2member_map_:
        raise ProtocolError(f"reply with {nkp} keypoints and status {status}", fatal=True)
    keypoints_out.reshape(-1)[:] = np.frombuffer(
        data, dtype=np.float32, count=NUM_KEYPOINTS * 3, offset=REPLY_HEADER.size
    )
    return Reply(Status(status), seq, recv, t0, t1, send, keypoints_out)


# A reply's backend timestamps span at most this long (its clock, a duration): a frame that took longer
# has been given up on by any edge's reply timeout.
MAX_SERVE_NS = 60 * 10**9


def reply_problem(reply: Reply, expected_seq: int, width: int, height: int) -> str:
    """Why a parsed reply is not to be believed ("" when it is): the backend serves in order, so it answers
    the oldest frame in flight; its timestamps run forward over a plausible span; an OK pose's keypoints are
    finite, inside the frame (letterbox padding: up to a frame beyond it) and scored 0..1."""
    if reply.seq != expected_seq:
        return f"it answered frame {reply.seq}, but the oldest frame in flight is {expected_seq}"
    if not 0 <= reply.send_ns - reply.recv_ns <= MAX_SERVE_NS:
        return f"its reply spans {reply.send_ns - reply.recv_ns} ns from receiving the frame to sending"
    if reply.status != Status.OK:
        return ""
    kp = reply.keypoints
    if not np.isfinite(kp).all():
        return "its keypoints are not finite numbers"
    x, y, score = kp[:, 0], kp[:, 1], kp[:, 2]
    if (
        x.min() < -width
        or x.max() > 2 * width
        or y.min() < -height
        or y.max() > 2 * height
        or score.min() < 0
        or score.max() > 1
    ):
        return f"its keypoints lie outside the {width}x{height} frame or score outside 0..1"
    return ""


def round_trip(sock, header: bytes, payload: bytes, keypoints_out: np.ndarray) -> Reply:
    """Send one frame on a blocking socket and read its reply (a tool's client, not the edge's hot path).
    Raises ConnectionError when the backend closes the connection first."""
    sock.sendall(header + payload)
    data = bytearray()
    while len(data) < REPLY_SIZE:
        chunk = sock.recv(REPLY_SIZE - len(data))
        if not chunk:
            raise ConnectionError("the backend closed the connection")
        data += chunk
    return parse_reply_into(data, keypoints_out)


def _mac(key: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, label + first + second, hashlib.sha256).digest()


def encode_hello() -> tuple[bytes, bytes]:
    """(the edge's hello, its nonce)."""
    nonce = os.urandom(NONCE_BYTES)
    return HELLO.pack(HELLO_MAGIC, VERSION, nonce), nonce


def parse_hello(data: bytes | bytearray | memoryview) -> bytes:
    """The edge's nonce from a hello; ProtocolError (fatal) for anything else."""
    magic, version, nonce = HELLO.unpack(data)
    if magic != HELLO_MAGIC:
        raise ProtocolError(f"bad hello magic {magic!r}: not a lalelu edge with the link key", fatal=True)
    if version != VERSION:
        raise ProtocolError(f"edge speaks protocol {version}, this backend {VERSION}", fatal=True)
    return bytes(nonce)


def encode_challenge(key: bytes, edge_nonce: bytes) -> tuple[bytes, bytes]:
    """(the backend's challenge, its nonce): it proves the key on the edge's nonce."""
    nonce = os.urandom(NONCE_BYTES)
    mac = _mac(key, b"lalelu backend", edge_nonce, nonce)
    return CHALLENGE.pack(CHALLENGE_MAGIC, VERSION, nonce, mac), nonce


def check_challenge(key: bytes, edge_nonce: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """The proof to send back, once the challenge shows the backend holds `key`; ProtocolError if not."""
    magic, version, backend_nonce, mac = CHALLENGE.unpack(data)
    if magic != CHALLENGE_MAGIC:
        raise ProtocolError(
            f"the backend answered the key exchange with {bytes(magic)!r}: is that port a lalelu backend "
            "with [backend] key_file?",
            fatal=True,
        )
    if version != VERSION:
        raise ProtocolError(f"backend speaks protocol {version}, edge speaks {VERSION}", fatal=True)
    if not hmac.compare_digest(mac, _mac(key, b"lalelu backend", edge_nonce, backend_nonce)):
        raise ProtocolError(
            "the backend does not prove the link key: [edge] key_file and [backend] key_file differ",
            fatal=True,
        )
    return PROOF.pack(PROOF_MAGIC, VERSION, _mac(key, b"lalelu edge", backend_nonce, edge_nonce))


def proof_is_valid(key: bytes, edge_nonce: bytes, backend_nonce: bytes, data: bytes | bytearray) -> bool:
    magic, version, mac = PROOF.unpack(data)
    expected = _mac(key, b"lalelu edge", backend_nonce, edge_nonce)
    return magic == PROOF_MAGIC and version == VERSION and hmac.compare_digest(mac, expected)


def authenticate(sock, key: bytes) -> None:
    """The edge's side of the key exchange on a blocking socket (its timeout applies); ProtocolError
    naming the mismatch, ConnectionError when the backend closes first."""
    hello, nonce = encode_hello()
    sock.sendall(hello)
    data = bytearray()
    while len(data) < CHALLENGE.size:
        try:
            chunk = sock.recv(CHALLENGE.size - len(data))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionError(
                "the backend closed the connection at the key exchange: it has no [backend] key_file, or "
                "does not allow this address"
            )
        data += chunk
    sock.sendall(check_challenge(key, nonce, data))
