"""The inference server: one thread, one pinned core, a selectors loop serving any number of edges.

Each pass of the loop reads at most one complete frame per connection, then infers the frames that have
arrived, oldest first, together in one engine call where the engine batches (torch-cuda: a band of edges
costs about one frame's GPU time; `max_batch`), never waiting for more to come. Every edge gets its own
reply as soon as its batch is done, and a connection that fails its reply is dropped alone.

Frames are answered in arrival order, each edge within its share: a host (one address) gets at most
`max_fps_per_edge` frames inferred a second and frames beyond it are answered BUSY at once; a host holds
at most MAX_PER_ADDRESS connections (a new one replaces one that sends no frames: an edge reconnecting
after a crash is admitted at once, one that plays is never replaced), and unproven key exchanges have a pool of their own (MAX_PENDING_KEY), so
strangers cannot fill the places of the inventory's edges. Every connection owns preallocated buffers; a bad packet is
logged (rate-limited), counted, and either answered with BAD_FRAME (the stream is still framed) or
ends that connection (it is not), never the server.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lalelu.clock import now_ns
from lalelu.engine.estimator import PoseEstimator
from lalelu.errors import LaleluError, RunFailed
from lalelu.gestures.consumer import PoseConsumer
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.logs import RateLimited
from lalelu.timing import BACKEND_TELEMETRY_DTYPE, TelemetryRing
from lalelu.wire.framing import FrameReader, Read
from lalelu.wire.protocol import (
    FRAME_HEADER,
    FRAME_MAGIC,
    HELLO,
    PROOF,
    REPLY_SIZE,
    FrameHeader,
    ProtocolError,
    Status,
    encode_challenge,
    encode_reply_into,
    parse_hello,
    proof_is_valid,
)

log = logging.getLogger("lalelu.backend")


class SmClockLike(Protocol):
    mhz: int


MAX_OUTBOX = 64 * REPLY_SIZE  # an edge that stops reading is dropped rather than buffered forever
MAX_CONNECTIONS = 32  # an edge holds one; more means a client that leaks them
MAX_PER_ADDRESS = 4  # an edge holds one, and one more while it reconnects
MAX_PENDING_KEY = 8  # key exchanges not yet proven: a real edge's takes a round trip, a stranger's 5 s
STALL_S = 5.0  # a frame begun and not finished for this long is from a dead or hostile client
IDLE_S = 10.0  # an edge sends frames many times a second; a connection silent this long is dead
ROOM_AFTER_S = 1.0  # when full, a connection silent this long gives its place to a new one
# A batch on the GPU this long has hung (a batch takes milliseconds): the loop stops kicking the systemd
# watchdog, which then restarts the backend, as it did when a hung GPU blocked the loop in its wait
HUNG_BATCH_S = 2.0


def batch_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Engine calls by frames inferred together ({"1": calls, "2": ...}), from counts indexed by batch
    size; sizes never seen left out."""
    return {str(n): int(c) for n, c in enumerate(sizes) if c}


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
    # The key exchange: its next message's bytes while it runs (None: keyless, or proven), both nonces.
    auth: bytearray | None = None
    auth_got: int = 0
    edge_nonce: bytes = b""
    backend_nonce: bytes = b""
    connected_ns: int = field(default_factory=now_ns)
    last_frame_ns: int = 0  # when its last complete frame arrived: a connection that plays
    # a complete frame in its reader's pixels, waiting for its batch: not read on until it is served
    ready: FrameHeader | None = None
    served: int = 0  # frames inferred for it
    served_reported: int = 0  # `served` at the last band_state()


class InferenceServer:
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
        # an engine that cannot batch (LiteRT, a stand-in) is served one frame at a time
        self.max_batch = max(1, min(max_batch, int(getattr(estimator, "max_batch", 1))))
        self.batch_sizes = np.zeros(self.max_batch + 1, np.int64)  # engine calls by number of frames
        self._ready: list[Connection] = []  # connections with a complete frame, in arrival order
        self._batch: list[Connection] = []
        self._batch_frames: list[np.ndarray] = []
        self._batch_out = np.zeros((self.max_batch, NUM_KEYPOINTS, 3), np.float32)
        self._sizes_reported = self.batch_sizes.copy()
        self._reported_at = time.monotonic()
        # An engine with slots (torch-cuda) takes a batch while another is still on the GPU: a frame that
        # arrives then starts at once instead of waiting for the running batch. Serial (max_batch 1) waits.
        slots = min(int(getattr(estimator, "slots", 0)), batches_in_flight)
        self.slots = slots if self.max_batch > 1 and slots > 1 else 0
        self._slot_conns: list[list[Connection]] = [[] for _ in range(self.slots)]
        self._slot_rusage: list[resource.struct_rusage | None] = [None] * self.slots
        self._in_flight: list[tuple[int, int]] = []  # (slot, launched ns), oldest first
        self._said_hung = False
        # Each host's token bucket: max_fps_per_edge frames a second, bursts of 0.1 s (a camera's jitter)
        self.max_fps_per_edge = max_fps_per_edge
        self._burst = max(4.0, max_fps_per_edge / 10)
        self._budgets: dict[str, list[float]] = {}  # host -> [tokens, refilled at (s)]
        self.key = key  # the link key: an edge must prove it before a frame is read
        self.consumer_factory = consumer_factory  # (width, height) -> consumer, when the sound leaves here
        self.consumer: PoseConsumer | None = None
        self.estimator = estimator
        self.max_payload = max_payload
        self.allow = set(allow)
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

    def stop(self) -> None:
        self._running = False

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
                if watchdog is not None and not self._hung():
                    watchdog.kick()  # every pass: a pass handles at most one frame per edge
                # batches on the GPU: poll (they end within milliseconds) rather than sleep through the end
                events = self._sel.select(timeout=0.0 if now < poll_until or self._in_flight else 0.2)
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
                if self._in_flight:
                    self._collect_done()
                if self._ready:
                    self._serve_ready()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    self._drop_stalled()
                if on_tick is not None and now >= next_tick:
                    next_tick += tick_s
                    on_tick(self)
        finally:
            self.close()

    def band_state(self) -> dict:
        """Since the last call: each connection that sent frames (peer, frames a second) and the engine
        calls by frames per call. Called from the loop (microseconds: a few small copies)."""
        now = time.monotonic()
        elapsed = max(now - self._reported_at, 1e-3)
        sizes = self.batch_sizes - self._sizes_reported
        self._sizes_reported[:] = self.batch_sizes
        self._reported_at = now
        edges = []
        for conn in self._connections.values():
            frames = conn.served - conn.served_reported
            conn.served_reported = conn.served
            if frames:
                edges.append({"peer": conn.peer, "fps": round(frames / elapsed, 1)})
        calls = int(sizes.sum())
        return {
            "edges": sorted(edges, key=lambda e: e["peer"]),
            "engine_calls_by_frames": batch_histogram(sizes),
            "mean_batch": float((sizes * np.arange(sizes.size)).sum() / calls) if calls else 0.0,
            "max_batch_seen": int(np.flatnonzero(sizes).max()) if calls else 0,
            "max_batch": self.max_batch,
            "interval_s": round(elapsed, 2),
        }

    def _hung(self) -> bool:
        """Whether the oldest batch in flight has been on the GPU for HUNG_BATCH_S (said once in the log)."""
        if not self._in_flight or now_ns() - self._in_flight[0][1] < HUNG_BATCH_S * 1e9:
            return False
        if not self._said_hung:
            self._said_hung = True
            log.error(
                "a batch has been on the GPU for over %g s: the engine hangs; the watchdog is no longer "
                "kicked, so systemd restarts the backend",
                HUNG_BATCH_S,
            )
        return True

    def _drop_stalled(self) -> None:
        now = now_ns()
        for conn in list(self._connections.values()):
            if conn.auth is not None and conn.connected_ns < now - STALL_S * 1e9:
                self.counters.dropped_clients += 1
                self._drop(conn, f"did not complete the key exchange in {STALL_S:g} s")
            elif conn.reader.begun_ns and conn.reader.begun_ns < now - STALL_S * 1e9:
                self.counters.dropped_clients += 1
                self._drop(conn, f"sent part of a frame, then nothing for {STALL_S:g} s")
            elif conn.reader.last_byte_ns < now - IDLE_S * 1e9:
                self.counters.dropped_clients += 1
                self._drop(conn, f"sent nothing for {IDLE_S:g} s")

    def _make_room(self, why: str) -> bool:
        """Close the connection silent the longest, if silent for ROOM_AFTER_S: an edge that plays is never
        silent that long, so idle clients cannot keep a real one out."""
        if not self._connections:
            return False
        quietest = min(self._connections.values(), key=lambda c: c.reader.last_byte_ns)
        if quietest.reader.last_byte_ns > now_ns() - ROOM_AFTER_S * 1e9:
            return False
        self.counters.dropped_clients += 1
        self._drop(quietest, f"silent, and its place was needed ({why})")
        return True

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
            self._rate_limited_warning(f"cannot accept a connection: {exc.strerror or exc}")
            if not self._make_room(exc.strerror or str(exc)):
                time.sleep(0.01)  # the listener stays readable: do not spin on it
            return
        peer = f"{addr[0]}:{addr[1]}"
        if self.allow and addr[0] not in self.allow:
            self._rate_limited_warning(f"refused {peer}: not in [backend] allow")
            sock.close()
            return
        # the host's own limit first: a newcomer refused for it must not cost another host its place
        if not self._admit_from(addr[0]):
            self._rate_limited_warning(
                f"refused {peer}: {MAX_PER_ADDRESS} connections from {addr[0]} already, all of them sending frames"
            )
            sock.close()
            return
        if len(self._connections) >= MAX_CONNECTIONS and not self._make_room(f"{MAX_CONNECTIONS} open"):
            self._rate_limited_warning(
                f"refused {peer}: {MAX_CONNECTIONS} connections open already, all of them active"
            )
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counters.connections += 1
        conn = Connection(sock, peer, addr[0], FrameReader(self.max_payload, self.estimator.frame_buffer))
        if self.key:
            conn.auth = bytearray(HELLO.size)
        else:
            log.info("edge connected: %s", peer)
        self._connections[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _admit_from(self, host: str) -> bool:
        """Make the places a new connection from `host` needs, or say there is none: when the host holds
        MAX_PER_ADDRESS, the oldest of its connections that has sent no frame for IDLE_S goes (an
        edge that reconnects replaces the one it lost; one that plays is never replaced, and when all of
        them play the newcomer is refused); the oldest unproven key exchange goes when MAX_PENDING_KEY are
        running (strangers queue among themselves)."""
        own = [c for c in self._connections.values() if c.host == host]
        if len(own) >= MAX_PER_ADDRESS:
            # playing: a frame within IDLE_S (an emulated or loaded edge sends one every few seconds; the
            # sweep closes a connection silent that long anyway)
            quiet_since = now_ns() - IDLE_S * 1e9
            idle = [c for c in own if c.last_frame_ns < quiet_since]
            if not idle:
                return False
            self.counters.dropped_clients += 1
            self._drop(min(idle, key=lambda c: c.connected_ns), f"replaced: {host} opened another connection")
        if self.key:
            pending = [c for c in self._connections.values() if c.auth is not None]
            if len(pending) >= MAX_PENDING_KEY:
                # the oldest of the host with the most unfinished exchanges: a flood of strangers pushes out
                # its own, not the one exchange of an edge that is proving its key right now
                per_host: dict[str, int] = {}
                for c in pending:
                    per_host[c.host] = per_host.get(c.host, 0) + 1
                busiest = max(per_host, key=per_host.__getitem__)
                self.counters.dropped_clients += 1
                self._drop(
                    min((c for c in pending if c.host == busiest), key=lambda c: c.connected_ns),
                    f"key exchange unfinished while {MAX_PENDING_KEY} others waited",
                )
        return True

    def _within_budget(self, host: str) -> bool:
        """Spend one of `host`'s frames; False when it has none left this instant."""
        now = time.monotonic()
        bucket = self._budgets.get(host)
        if bucket is None:
            bucket = self._budgets[host] = [self._burst, now]
            if len(self._budgets) > 4 * MAX_CONNECTIONS:  # hosts long gone: keep the table bounded
                live = {c.host for c in self._connections.values()} | {host}
                for gone in [h for h in self._budgets if h not in live]:
                    del self._budgets[gone]
        bucket[0] = min(self._burst, bucket[0] + (now - bucket[1]) * self.max_fps_per_edge)
        bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _rate_limited_warning(self, message: str) -> None:
        self._warnings.warn(log, message)

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
        conn.bad_packets.warn(log, f"bad packet from {conn.peer}: {err.reason}")

    def _on_readable(self, conn: Connection) -> None:
        if conn.ready is not None:
            return  # its frame still fills the buffer the next one would be read into
        while conn.auth is not None:
            if not self._on_auth_readable(conn):
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

    def _on_auth_readable(self, conn: Connection) -> bool:
        """Read the key exchange's next message; True once the edge has proven the key and may go on."""
        assert conn.auth is not None
        try:
            n = conn.sock.recv_into(memoryview(conn.auth)[conn.auth_got :])
        except BlockingIOError:
            return False
        except OSError as exc:
            self._drop(conn, str(exc))
            return False
        if n == 0:
            self._drop(conn, "closed by the edge during the key exchange")
            return False
        conn.reader.last_byte_ns = now_ns()
        conn.auth_got += n
        if conn.auth_got >= FRAME_HEADER.size and conn.auth[:4] == FRAME_MAGIC:
            # A keyless edge's first frame: tell it why, then close.
            seq = FRAME_HEADER.unpack_from(conn.auth)[4]
            self._send(conn, Status.UNAUTHENTICATED, seq, 0, 0, 0, self._zeros)
            self._flush(conn)
            self._rate_limited_warning(
                f"refused {conn.peer}: it sent frames without the link key (set [edge] key_file)"
            )
            self._drop(conn, "no key exchange")
            return False
        if conn.auth_got < len(conn.auth):
            return True
        conn.auth_got = 0
        if not conn.edge_nonce:
            try:
                conn.edge_nonce = parse_hello(conn.auth)
            except ProtocolError as err:
                self._bad(conn, err)
                self._drop(conn, f"no key exchange ({err.reason})")
                return False
            challenge, conn.backend_nonce = encode_challenge(self.key, conn.edge_nonce)
            conn.auth = bytearray(PROOF.size)
            self._queue(conn, challenge)
            return True
        if not proof_is_valid(self.key, conn.edge_nonce, conn.backend_nonce, conn.auth):
            self.counters.bad_packets += 1
            self._rate_limited_warning(f"refused {conn.peer}: it does not prove the link key")
            self._drop(conn, "wrong link key")
            return False
        conn.auth = None
        conn.reader.last_byte_ns = now_ns()
        log.info("edge connected: %s (link key proven)", conn.peer)
        return True

    def _on_frame(self, conn: Connection, frame: FrameHeader) -> None:
        if not self._within_budget(conn.host):
            self.counters.over_budget += 1
            self._rate_limited_warning(
                f"{conn.host} sends more than [backend] max_fps_per_edge = {self.max_fps_per_edge:g} frames/s: "
                "the frames over it are answered BUSY"
            )
            self._send(conn, Status.BUSY, frame.seq, conn.reader.recv_ns, 0, 0, self._zeros)
            return
        conn.last_frame_ns = conn.reader.recv_ns
        conn.ready = frame
        self._ready.append(conn)

    def _serve_ready(self) -> None:
        """Infer every frame that has arrived, oldest first: up to max_batch of one geometry per engine
        call (edges of one band share their cameras' geometry, so one call in the usual case)."""
        ready, batch = self._ready, self._batch
        while ready and (not self.slots or len(self._in_flight) < self.slots):
            first = ready[0]
            batch.clear()
            keep = 0
            for conn in ready:
                if conn.sock.fileno() < 0:
                    conn.ready = None  # dropped since its frame arrived: nobody to answer
                elif len(batch) < self.max_batch and conn.reader.geometry == first.reader.geometry:
                    batch.append(conn)
                else:
                    ready[keep] = conn
                    keep += 1
            del ready[keep:]
            if batch and self.slots:
                self._launch(batch)
            elif batch:
                self._infer(batch)

    def _frames_of(self, batch: list[Connection]) -> list[np.ndarray]:
        frames = self._batch_frames
        frames.clear()
        for conn in batch:
            assert conn.reader.pixels is not None
            frames.append(conn.reader.pixels)
        return frames

    def _launch(self, batch: list[Connection]) -> None:
        """Start the batch in a free slot; its replies go out when _collect_done finds it finished."""
        header = batch[0].ready
        assert header is not None
        frames = self._frames_of(batch)
        before = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = now_ns()
        try:
            slot = self.estimator.launch_batch(frames, header.pixel_format, header.width, header.height)
        except Exception:  # an engine failure must not take down the other edges
            log.exception(
                "inference failed for %d frame(s) from %s", len(batch), ", ".join(c.peer for c in batch)
            )
            self._answer(batch, Status.ENGINE_ERROR, t0, now_ns(), before, before)
            return
        self._slot_conns[slot][:] = batch
        self._slot_rusage[slot] = before
        self._in_flight.append((slot, t0))

    def _collect_done(self) -> None:
        """Answer every batch in flight that has finished (each edge has one frame at most in flight, so
        finishing out of launch order reorders nobody's replies)."""
        k = 0
        while k < len(self._in_flight):
            slot, t0 = self._in_flight[k]
            try:
                done = self.estimator.batch_done(slot)
            except Exception:
                done = True  # collect_batch raises it again and answers the batch ENGINE_ERROR
            if not done:
                k += 1
                continue
            del self._in_flight[k]
            batch = self._slot_conns[slot]
            header = batch[0].ready
            assert header is not None
            status = Status.OK
            try:
                self.estimator.collect_batch(
                    slot, header.pixel_format, header.width, header.height, self._batch_out
                )
            except Exception:
                log.exception(
                    "inference failed for %d frame(s) from %s", len(batch), ", ".join(c.peer for c in batch)
                )
                status = Status.ENGINE_ERROR
            before = self._slot_rusage[slot]
            assert before is not None
            self._answer(batch, status, t0, now_ns(), before, resource.getrusage(resource.RUSAGE_THREAD))
            batch.clear()

    def _infer(self, batch: list[Connection]) -> None:
        """The batch inferred and waited for (an engine without slots, or max_batch 1)."""
        n = len(batch)
        frames = self._frames_of(batch)
        header = batch[0].ready
        assert header is not None
        fmt, width, height = header.pixel_format, header.width, header.height
        est = self.estimator
        before = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = now_ns()
        status = Status.OK
        try:
            if n == 1:
                est.estimate(frames[0], fmt, width, height, self._batch_out[0])
            else:
                est.estimate_batch(frames, fmt, width, height, self._batch_out)
        except Exception:  # an engine failure must not take down the other edges
            log.exception("inference failed for %d frame(s) from %s", n, ", ".join(c.peer for c in batch))
            status = Status.ENGINE_ERROR
        self._answer(batch, status, t0, now_ns(), before, resource.getrusage(resource.RUSAGE_THREAD))

    def _answer(
        self,
        batch: list[Connection],
        status: Status,
        t0: int,
        t1: int,
        before: resource.struct_rusage,
        after: resource.struct_rusage,
    ) -> None:
        """Each frame's reply (poses from _batch_out), telemetry row and pose to the sound consumer."""
        n = len(batch)
        est = self.estimator
        self.counters.frames += n
        self.counters.batches += 1
        self.batch_sizes[n] += 1
        sm_mhz = self.gpu_clock.mhz if self.gpu_clock is not None else 0
        counted = False
        for k, conn in enumerate(batch):
            frame, conn.ready = conn.ready, None
            assert frame is not None
            if conn.sock.fileno() < 0:
                continue  # dropped while its frame was on the GPU: no reply, and no pose to play
            conn.served += 1
            keypoints = self._batch_out[k]
            self._send(
                conn, status, frame.seq, conn.reader.recv_ns, t0, t1, keypoints
            )  # drops conn alone if it fails
            replied = now_ns()
            row = self.telemetry.next_row()
            row["seq"], row["capture_ns"] = frame.seq, frame.capture_ns
            row["first_byte_ns"], row["received_ns"], row["replied_ns"] = (
                conn.reader.first_byte_ns,
                conn.reader.recv_ns,
                replied,
            )
            row["pre_ns"], row["engine_ns"], row["post_ns"] = est.pre_ns, est.engine_ns, est.post_ns
            row["device_ns"] = est.device_ns
            row["batch"] = n
            # the batch's thread counters on its first row only, so that a batch is not counted n times (with
            # batches in flight they span launch to collection, and two batches' spans can overlap)
            first, counted = not counted, True
            row["involuntary_switches"] = after.ru_nivcsw - before.ru_nivcsw if first else 0
            row["voluntary_switches"] = after.ru_nvcsw - before.ru_nvcsw if first else 0
            row["minor_faults"] = after.ru_minflt - before.ru_minflt if first else 0
            row["major_faults"] = after.ru_majflt - before.ru_majflt if first else 0
            row["sm_mhz"] = sm_mhz
            if self.consumer_factory is not None and status == Status.OK and conn.sock.fileno() >= 0:
                if self.consumer is None:
                    self.consumer = self.consumer_factory(frame.width, frame.height)
                self.consumer.on_pose(frame.seq, frame.capture_ns, keypoints)
                conn.plays = True

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
