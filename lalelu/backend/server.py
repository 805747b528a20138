"""The inference server: one thread, one pinned core, a selectors loop serving any number of edges.

Each pass of the loop reads at most one complete frame per connection (lalelu.wire.framing says what
arrived), then infers the frames that have arrived together (batches.py: oldest first, up to `max_batch`
per engine call, never waiting for more). Every edge gets its own reply as soon as its batch is done, and
a connection that fails its reply is dropped alone. Who may connect and how much each may send is
admission.py's (per-host connection caps and frame budgets, the pool of unproven key exchanges, the stall
and idle sweep), so strangers and a flooding edge cannot keep the inventory's edges out. Every
connection owns preallocated buffers; a bad packet is logged (rate-limited), counted, and either answered
with BAD_FRAME (the stream is still framed) or ends that connection (it is not), never the server.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lalelu.backend.admission import Admission
from lalelu.backend.batches import BatchServing, SmClockLike
from lalelu.clock import now_ns
from lalelu.engine.estimator import PoseEstimator
from lalelu.errors import LaleluError, RunFailed
from lalelu.gestures.consumer import PoseConsumer
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.logs import RateLimited
from lalelu.timing import BACKEND_TELEMETRY_DTYPE, TelemetryRing
from lalelu.wire.framing import FrameReader, KeyExchange, Proof, Read
from lalelu.wire.protocol import (
    REPLY_SIZE,
    FrameHeader,
    ProtocolError,
    Status,
    encode_reply_into,
)

log = logging.getLogger("lalelu.backend")


MAX_OUTBOX = 64 * REPLY_SIZE  # an edge that stops reading is dropped rather than buffered forever


@dataclass
class Counters:
    connections: int = 0
    frames: int = 0
    bad_packets: int = 0
    bad_frames: int = 0
    dropped_clients: int = 0
    over_budget: int = 0  # frames answered BUSY: their host sent more than max_fps_per_edge
    batches: int = 0  # engine calls: frames / batches is the mean batch

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Connection:
    sock: socket.socket
    peer: str
    host: str  # the peer's address: budgets and connection caps count per host
    reader: FrameReader  # its frames as they arrive (the wire's side)
    outbox: bytearray = field(default_factory=bytearray)
    bad_packets: RateLimited = field(default_factory=RateLimited)  # its warnings, at most one a second
    plays: bool = False  # its poses reached the sound consumer
    proving: KeyExchange | None = None  # the key exchange while it runs (None: keyless, or proven)
    connected_ns: int = field(default_factory=now_ns)
    last_frame_ns: int = 0  # when its last complete frame arrived: a connection that plays
    # a complete frame in its reader's pixels, waiting for its batch: not read on until it is served
    ready: FrameHeader | None = None
    served: int = 0  # frames inferred for it
    served_reported: int = 0  # `served` at the last band_state()


class InferenceServer:
    """The loop and each connection's life: accept, key exchange, read, reply, drop (~300 lines: what
    one pass does to one connection reads best in one place; the decisions it asks for are Admission's,
    BatchServing's and the wire readers')."""

    def __init__(
        self,
        estimator: PoseEstimator,
        host: str,
        port: int,
        max_payload: int,
        allow: tuple[str, ...] = (),
        consumer_factory: Callable[[int, int], PoseConsumer] | None = None,
        gpu_clock: SmClockLike | None = None,
        busy_poll_s: float = 0.0,
        key: bytes = b"",
        max_fps_per_edge: float = 250.0,
        max_batch: int = 1,
        batches_in_flight: int = 2,
    ) -> None:
        self.busy_poll_s = busy_poll_s
        self.key = key  # the link key: an edge must prove it before a frame is read
        self.consumer_factory = consumer_factory  # (width, height) -> consumer, when the sound leaves here
        self.consumer: PoseConsumer | None = None
        self.estimator = estimator
        self.max_payload = max_payload
        self.counters = Counters()
        self.telemetry = TelemetryRing(8192, BACKEND_TELEMETRY_DTYPE)
        self.gpu_clock = gpu_clock
        self._sel = selectors.DefaultSelector()
        try:
            self._listener = socket.create_server((host, port), backlog=16, reuse_port=False)
        except OSError as exc:
            raise RunFailed(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another backend may hold the port; "
                "stop it, or choose another [backend] port / --port"
            ) from exc
        except UnicodeError as exc:
            raise LaleluError(f"[backend] listen_host = {host!r} is not a valid host name ({exc})") from exc
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self.address = self._listener.getsockname()[:2]
        self._reply = bytearray(REPLY_SIZE)
        self._zeros = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        self._running = True
        self._closed = False
        self._warnings = RateLimited()
        self._connections: dict[socket.socket, Connection] = {}
        self.batches = BatchServing(
            estimator,
            max_batch,
            batches_in_flight,
            self.counters,
            self.telemetry,
            self._send,
            self._play,
            gpu_clock,
        )
        self.admission = Admission(
            self._connections, allow, bool(key), max_fps_per_edge, self.counters, self._drop
        )

    def stop(self) -> None:
        self._running = False

    @property
    def max_batch(self) -> int:
        return self.batches.max_batch

    @property
    def slots(self) -> int:
        return self.batches.slots

    @property
    def batch_sizes(self) -> np.ndarray:
        return self.batches.batch_sizes

    def band_state(self) -> dict:
        """Since the last call: each connection that sent frames and the engine calls by frames per call."""
        return self.batches.band_state(self._connections.values())

    def _play(self, conn: Connection, frame: FrameHeader, keypoints: np.ndarray) -> None:
        """A pose to the sound, where it leaves from the backend ([output] where = "backend")."""
        if self.consumer_factory is None:
            return
        if self.consumer is None:
            self.consumer = self.consumer_factory(frame.width, frame.height)
        self.consumer.on_pose(frame.seq, frame.capture_ns, keypoints)
        conn.plays = True

    def serve(self, seconds: float = 0.0, on_tick=None, tick_s: float = 5.0, watchdog=None) -> None:
        """Serve until stop() or `seconds`; closes the server (all notes off) however it ends."""
        end = time.monotonic() + seconds if seconds else float("inf")
        next_tick = next_sweep = time.monotonic() + tick_s
        # Busy polling: for busy_poll_s after the last event the loop asks select without sleeping, so
        # the next frame's first bytes are seen at once instead of after the wake-up of an idle CPU
        # (tens to ~100 us on a virtual machine). It costs that CPU, which the backend owns anyway.
        poll_until = 0.0
        try:
            while self._running and (now := time.monotonic()) < end:
                if watchdog is not None and not self.batches.hung():
                    watchdog.kick()  # every pass: a pass handles at most one frame per edge
                # batches on the GPU: poll (they end within milliseconds) rather than sleep through the end
                events = self._sel.select(timeout=0.0 if now < poll_until or self.batches.in_flight else 0.2)
                if events and self.busy_poll_s:
                    poll_until = time.monotonic() + self.busy_poll_s
                for key, mask in events:
                    if key.data is None:
                        self._accept()
                    elif key.data.sock.fileno() < 0:
                        continue  # closed earlier in this pass
                    elif mask & selectors.EVENT_READ:
                        self._on_readable(key.data)
                    if key.data is not None and mask & selectors.EVENT_WRITE:
                        self._flush(key.data)
                if self.batches.in_flight:
                    self.batches.collect_done()
                if self.batches.ready:
                    self.batches.serve_ready()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    self.admission.sweep()
                if on_tick is not None and now >= next_tick:
                    next_tick += tick_s
                    on_tick(self)
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.consumer is not None:
            self.consumer.close()  # all notes off
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: out of descriptors or memory, not fatal
            self._rate_limited_warning("cannot accept a connection: %s", exc.strerror or exc)
            if not self.admission.make_room(exc.strerror or str(exc)):
                time.sleep(0.01)  # the listener stays readable: do not spin on it
            return
        peer = f"{addr[0]}:{addr[1]}"
        refused = self.admission.refusal(addr[0], peer)
        if refused is not None:
            self._rate_limited_warning("%s", refused)
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counters.connections += 1
        conn = Connection(sock, peer, addr[0], FrameReader(self.max_payload, self.estimator.frame_buffer))
        if self.key:
            conn.proving = KeyExchange(self.key)
        else:
            log.info("edge connected: %s", peer)
        self._connections[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _rate_limited_warning(self, message: str, *args: object) -> None:
        self._warnings.warn(log, message, *args)

    def _drop(self, conn: Connection, why: str) -> None:
        if conn.sock.fileno() < 0:
            return  # dropped earlier in this pass (made room for another); its event came with the batch
        log.info("edge %s disconnected: %s", conn.peer, why)
        if conn.plays and self.consumer is not None:
            self.consumer.all_notes_off()  # its poses stopped: no note-off would ever come
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._connections.pop(conn.sock, None)
        conn.sock.close()
        conn.outbox.clear()  # nobody to send it to; a frame of its still on the GPU is answered to no one

    def _bad(self, conn: Connection, err: ProtocolError) -> None:
        self.counters.bad_packets += 1
        conn.bad_packets.warn(log, "bad packet from %s: %s", conn.peer, err.reason)

    def _on_readable(self, conn: Connection) -> None:
        if conn.ready is not None:
            return  # its frame still fills the buffer the next one would be read into
        if conn.proving is not None and not self._on_key_exchange(conn, conn.proving):
            return
        reader = conn.reader
        while (got := reader.read(conn.sock)) is Read.REJECTED:
            assert reader.error is not None
            self._bad(conn, reader.error)  # at its header: a peer that never sends the payload is counted too
            self.counters.bad_frames += 1
        if got is Read.MORE:
            return
        if got is Read.CLOSED:
            self._drop(conn, reader.why)
        elif got is Read.UNFRAMEABLE:
            assert reader.error is not None
            self._bad(conn, reader.error)
            self._drop(conn, f"unframeable stream ({reader.error.reason})")
        elif got is Read.SKIPPED:
            assert reader.error is not None
            self._send(conn, Status.BAD_FRAME, reader.error.seq, reader.recv_ns, 0, 0, self._zeros)
        else:
            assert reader.last is not None
            self._on_frame(conn, reader.last)

    def _on_key_exchange(self, conn: Connection, proving: KeyExchange) -> bool:
        """Read the key exchange on; True once the edge has proven the key and its frames may be read."""
        while True:
            got = proving.read(conn.sock)
            if got is not Proof.MORE:
                conn.reader.last_byte_ns = now_ns()
            if got is Proof.CHALLENGE:
                self._queue(conn, proving.challenge)
                continue
            if got is Proof.PROVEN:
                conn.proving = None
                log.info("edge connected: %s (link key proven)", conn.peer)
                return True
            if got is Proof.CLOSED:
                self._drop(conn, proving.why)
            elif got is Proof.KEYLESS:  # a keyless edge's first frame: tell it why, then close
                self._send(conn, Status.UNAUTHENTICATED, proving.keyless_seq, 0, 0, 0, self._zeros)
                self._flush(conn)
                self._rate_limited_warning(
                    "refused %s: it sent frames without the link key (set [edge] key_file)", conn.peer
                )
                self._drop(conn, "no key exchange")
            elif got is Proof.BAD_HELLO:
                assert proving.error is not None
                self._bad(conn, proving.error)
                self._drop(conn, f"no key exchange ({proving.error.reason})")
            elif got is Proof.WRONG_KEY:
                self.counters.bad_packets += 1
                self._rate_limited_warning("refused %s: it does not prove the link key", conn.peer)
                self._drop(conn, "wrong link key")
            return False

    def _on_frame(self, conn: Connection, frame: FrameHeader) -> None:
        if not self.admission.within_budget(conn.host):
            self.counters.over_budget += 1
            self._rate_limited_warning(
                "%s sends more than [backend] max_fps_per_edge = %g frames/s: the frames over it are answered BUSY",
                conn.host,
                self.admission.max_fps_per_edge,
            )
            self._send(conn, Status.BUSY, frame.seq, conn.reader.recv_ns, 0, 0, self._zeros)
            return
        conn.last_frame_ns = conn.reader.recv_ns
        conn.ready = frame
        self.batches.ready.append(conn)

    def _send(
        self, conn: Connection, status: Status, seq: int, recv: int, t0: int, t1: int, keypoints: np.ndarray
    ) -> None:
        encode_reply_into(self._reply, status, seq, recv, t0, t1, now_ns(), keypoints)
        self._queue(conn, self._reply)

    def _queue(self, conn: Connection, data: bytes | bytearray) -> None:
        """Send `data` now, or what the socket does not take once it can."""
        if conn.sock.fileno() < 0:
            return  # dropped: selectors would refuse its closed socket
        if conn.outbox:
            conn.outbox += data
        else:
            try:
                sent = conn.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._drop(conn, str(exc))
                return
            if sent < len(data):
                conn.outbox += data[sent:]
        if conn.outbox:
            if len(conn.outbox) > MAX_OUTBOX:
                self.counters.dropped_clients += 1
                self._drop(conn, "not reading its replies")
                return
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _flush(self, conn: Connection) -> None:
        if conn.sock.fileno() < 0 or not conn.outbox:
            return
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(conn, str(exc))
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
