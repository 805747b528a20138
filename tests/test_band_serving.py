"""A band on one backend: several edges' frames inferred together in one engine call, over real sockets.

The batching stand-in below takes the same time for a batch as for one frame (a launch-bound GPU network,
the reason to batch) and writes into each frame's pose a value read from that frame's own pixels, so an
edge can tell its own pose from another's. The real network batched on the CPU is in test_torch_engine."""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import numpy as np
import pytest
from support import wait_until
from test_fair_serving import from_host, serving
from test_protocol import recv_exactly

from lalelu.backend.server import InferenceServer
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.wire.protocol import REPLY_SIZE, Status, encode_frame_header, parse_reply_into

pytestmark = pytest.mark.process
W, H = 32, 24


class BatchingEstimator:
    """Stands in for a batching GPU engine: `seconds` per call whatever the batch; each pose's x column
    is its frame's first pixel value, so the reply shows whose frame it was. Gated: call k ends only once
    the test sets gates[k] (made as the call starts), so a test decides what happens during a batch."""

    max_batch = 16

    def __init__(self, seconds: float, gated: bool = False) -> None:
        self.seconds = seconds
        self.gated = gated
        self.gates: list[threading.Event] = []
        self.calls: list[int] = []  # frames per call
        self.pre_ns = self.engine_ns = self.post_ns = 0
        self.device_ns = -1

    def _gate(self) -> threading.Event | None:
        if not self.gated:
            return None
        self.gates.append(threading.Event())
        return self.gates[-1]

    def frame_buffer(self, fmt, width, height):
        return np.empty(FrameFormat(fmt, width, height).shape, np.uint8)

    def estimate(self, pixels, fmt, width, height, out) -> None:
        self.estimate_batch([pixels], fmt, width, height, out[None])

    def estimate_batch(self, frames, fmt, width, height, out) -> None:
        gate = self._gate()
        self.calls.append(len(frames))
        if gate is not None:
            assert gate.wait(20), "the test never ended this batch"
        else:
            time.sleep(self.seconds)
        for k, frame in enumerate(frames):
            out[k] = 0
            out[k, :, 0] = frame.reshape(-1)[0]


class AsyncBatchingEstimator(BatchingEstimator):
    """Stands in for torch-cuda's slots: up to two batches in flight, each done `seconds` after its launch
    (a GPU runs them side by side), or once its gate is set; the server polls batch_done and collects."""

    slots = 2

    def __init__(self, seconds: float, gated: bool = False) -> None:
        super().__init__(seconds, gated)
        # slot -> (done at, its gate, first pixels)
        self._in_flight: dict[int, tuple[float, threading.Event | None, list[int]]] = {}
        self.most_in_flight = 0

    def launch_batch(self, frames, fmt, width, height) -> int:
        slot = next(s for s in range(self.slots) if s not in self._in_flight)  # StopIteration: none free
        gate = self._gate()
        values = [int(f.reshape(-1)[0]) for f in frames]
        self._in_flight[slot] = (time.monotonic() + self.seconds, gate, values)
        self.most_in_flight = max(self.most_in_flight, len(self._in_flight))
        self.calls.append(len(frames))
        return slot

    def batch_done(self, slot: int) -> bool:
        done_at, gate, _ = self._in_flight[slot]
        return gate.is_set() if gate is not None else time.monotonic() >= done_at

    def collect_batch(self, slot, fmt, width, height, out) -> int:
        _, _, values = self._in_flight.pop(slot)
        for k, value in enumerate(values):
            out[k] = 0
            out[k, :, 0] = value
        return len(values)


ESTIMATORS = [
    pytest.param(BatchingEstimator, id="waits-for-each-batch"),
    pytest.param(AsyncBatchingEstimator, id="two-batches-in-flight"),
]


def frame(seq: int, value: int) -> bytes:
    return encode_frame_header(seq, 1, PixelFormat.RGB888, W, H) + bytes([value]) * (W * H * 3)


def reply(sock: socket.socket) -> tuple[int, int, float]:
    """(status, seq, the pose's first x) of the next reply."""
    out = np.zeros((17, 3), np.float32)
    r = parse_reply_into(recv_exactly(sock, REPLY_SIZE), out)
    return int(r.status), r.seq, float(out[0, 0])


def play(server: InferenceServer, host: str, value: int, frames: int, fps: float, results: list) -> None:
    """An edge: one frame at a time, the next after the reply or the frame period, whichever is later."""
    with from_host(server, host) as sock:
        for seq in range(frames):
            t0 = time.monotonic()
            sock.sendall(frame(seq, value))
            results.append(reply(sock))
            time.sleep(max(0.0, 1 / fps - (time.monotonic() - t0)))


def band_plays(
    server: InferenceServer, edges: int, first_value: int, frames: int, fps: float
) -> dict[int, list]:
    """`edges` edges (127.0.0.2, ...) play at once, edge k's frames holding first_value + k; their replies."""
    results: dict[int, list] = {k: [] for k in range(edges)}
    threads = [
        threading.Thread(
            target=play, args=(server, f"127.0.0.{k + 2}", first_value + k, frames, fps, results[k])
        )
        for k in range(edges)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def served_band(server: InferenceServer, *band: Any) -> dict:
    """band_plays(server, *band) while the server serves in a thread of its own; stopped after."""
    thread = serving(server)
    try:
        return band_plays(server, *band)
    finally:
        server.stop()
        thread.join(5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_band_is_inferred_in_batches_and_each_edge_gets_its_own_poses_in_order(estimator):
    est = estimator(0.02)  # 20 ms a call: four edges at 40 fps would need 80 ms of every 100 serially
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    results = served_band(server, 4, 10, 40, 40.0)
    for k, got in results.items():
        assert [seq for _, seq, _ in got] == list(range(40)), k  # every frame answered, in its order
        assert {status for status, _, _ in got} == {Status.OK}, k
        assert {x for _, _, x in got} == {10 + k}, k  # its own frames' poses, never a neighbour's
    assert sum(est.calls) == 160 == server.counters.frames
    assert max(est.calls) > 1  # frames of several edges went into one call
    assert len(est.calls) == server.counters.batches < 160
    assert server.batch_sizes.sum() == len(est.calls) and server.batch_sizes[2:].sum() > 0
    rows = server.telemetry.recent()
    assert rows.size == 160 and rows["batch"].max() == max(est.calls)
    if estimator is AsyncBatchingEstimator:  # frames that came while a batch ran started at once
        assert est.most_in_flight == 2


def test_max_batch_one_serves_one_frame_per_call():
    est = BatchingEstimator(0.01)
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=1)  # type: ignore[arg-type]
    results = served_band(server, 3, 20, 10, 50.0)
    assert set(est.calls) == {1} and len(est.calls) == 30
    for k, got in results.items():
        assert [(s, q, x) for s, q, x in got] == [(Status.OK, q, 20 + k) for q in range(10)]


def test_an_engine_that_cannot_batch_is_served_one_frame_at_a_time():
    from test_protocol import SlowEstimator  # estimate() only, no max_batch: LiteRT's shape

    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    assert server.max_batch == 1


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_flooding_edge_in_the_band_gets_its_share_and_the_others_every_frame(estimator):
    est = estimator(0.005)
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8, max_fps_per_edge=60.0)  # type: ignore[arg-type]
    thread = serving(server)
    stop = threading.Event()
    flood_statuses: list[int] = []

    def flood() -> None:  # back to back, far over its share
        with from_host(server, "127.0.0.9") as sock:
            seq = 0
            while not stop.is_set():
                sock.sendall(frame(seq, 99))
                flood_statuses.append(reply(sock)[0])
                seq += 1

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        flooder.start()
        time.sleep(0.2)
        results = band_plays(server, 3, 30, 30, 50.0)
    finally:
        stop.set()
        flooder.join(5)
        server.stop()
        thread.join(5)
    for k, got in results.items():
        assert got == [(Status.OK, q, 30 + k) for q in range(30)], k
    assert flood_statuses.count(Status.BUSY) > flood_statuses.count(Status.OK) > 0


class PoseLog:
    """Stands in for the backend's sound consumer: the first x of every pose it is given."""

    def __init__(self) -> None:
        self.xs: list[float] = []

    def on_pose(self, seq, capture_ns, keypoints) -> None:
        self.xs.append(float(keypoints[0, 0]))

    def all_notes_off(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_batch_member_that_drops_its_connection_mid_batch_costs_the_others_nothing(estimator):
    """The batch is held on the engine (gated) while one member resets its connection: its reply cannot
    be sent and its pose is not played; the others get theirs, and the band plays on."""
    est = estimator(0.0, gated=True)
    poses = PoseLog()
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8, consumer_factory=lambda w, h: poses)  # type: ignore[arg-type]
    thread = serving(server)
    two_slots = estimator is AsyncBatchingEstimator
    try:
        # one frame on the engine, or one in each slot: what comes next waits and goes in one batch
        busy = [from_host(server, f"127.0.0.{k}") for k in ((2, 6) if two_slots else (2,))]
        others = [from_host(server, f"127.0.0.{k}") for k in (3, 4, 5)]
        # all accepted before the engine is held (the listener gives one connection a pass)
        wait_until("the connections accepted", lambda: len(server._connections) == len(busy) + 3)
        for k, sock in enumerate(busy):
            sock.sendall(frame(0, 1 + 5 * k))
            wait_until("its batch on the engine", lambda k=k: len(est.calls) == k + 1)
        for k, sock in enumerate(others):
            sock.sendall(frame(0, 2 + k))
        time.sleep(0.2)  # read by the server (two slots) or waiting in their sockets (one engine call)
        est.gates[0].set()
        wait_until("the batch of the three", lambda: len(est.calls) == len(busy) + 1)
        assert est.calls[-1] == 3, est.calls  # the three together
        gone = others.pop()
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # a reset while its frame is on the engine: its reply cannot be sent
        time.sleep(0.1)
        for gate in est.gates:
            gate.set()
        assert [reply(sock) for sock in busy] == [(Status.OK, 0, 1.0 + 5 * k) for k in range(len(busy))]
        assert [reply(sock) for sock in others] == [(Status.OK, 0, 2.0), (Status.OK, 0, 3.0)]
        wait_until("the poses played", lambda: len(poses.xs) == len(busy) + 2)
        assert 4.0 not in poses.xs  # the dropped edge's pose was not played
        est.gated = False
        for sock in (*busy, *others):  # the server serves on, the band too
            sock.sendall(frame(1, 7))
        assert [reply(sock)[:2] for sock in (*busy, *others)] == [(Status.OK, 1)] * (len(busy) + 2)
        for sock in (*busy, *others):
            sock.close()
    finally:
        for gate in est.gates:
            gate.set()
        server.stop()
        thread.join(5)


def test_a_member_dropped_with_replies_still_queued_is_skipped_when_its_batch_ends():
    """A connection dropped (its send failed, or the sweep closed it) while replies to it were still queued
    and its frame was on the GPU: when the batch is collected it is skipped, not sent to (selectors
    refuses a closed socket: this raised out of the server's loop and ended the backend)."""
    import resource

    from lalelu.backend.server import Connection
    from lalelu.wire.framing import FrameReader
    from lalelu.wire.protocol import FrameHeader

    server = InferenceServer(AsyncBatchingEstimator(0.0), "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    poses = PoseLog()
    server.consumer = poses
    server.consumer_factory = lambda w, h: poses  # type: ignore[assignment]
    try:
        pairs = [socket.socketpair() for _ in range(2)]
        batch = []
        for k, (ours, _theirs) in enumerate(pairs):
            ours.setblocking(False)
            conn = Connection(
                ours, f"edge{k}", f"127.0.0.{k + 2}", FrameReader(1 << 20, server.estimator.frame_buffer)
            )
            server._connections[ours] = conn
            server._sel.register(ours, 1, conn)  # EVENT_READ
            conn.ready = FrameHeader(5, 1, PixelFormat.RGB888, 0, W, H)  # type: ignore[call-arg]
            batch.append(conn)
            server.batches._batch_out[k, :, 0] = 10 + k
        batch[0].outbox += b"unsent reply"
        server._drop(batch[0], "reset by the edge")
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        server.batches._answer(batch, Status.OK, 0, 1, usage, usage)  # must not raise
        assert batch[0].ready is None and not batch[0].outbox
        out = np.zeros((17, 3), np.float32)
        live = pairs[1][1]
        live.settimeout(5)
        assert parse_reply_into(recv_exactly(live, REPLY_SIZE), out).seq == 5 and out[0, 0] == 11.0
        assert poses.xs == [11.0]  # only the live member's pose played
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
        server.close()


def test_a_batch_that_never_ends_stops_the_watchdog_so_systemd_restarts_the_backend(monkeypatch):
    from lalelu.backend import batches as batches_module

    monkeypatch.setattr(batches_module, "HUNG_BATCH_S", 0.3)
    est = AsyncBatchingEstimator(0.0, gated=True)
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    kicks: list[float] = []

    class Watchdog:
        def kick(self) -> None:
            kicks.append(time.monotonic())

    thread = threading.Thread(target=server.serve, kwargs={"watchdog": Watchdog()}, daemon=True)
    thread.start()
    try:
        with from_host(server, "127.0.0.2") as sock:
            sock.sendall(frame(0, 1))
            wait_until("the batch on the engine", lambda: len(est.calls) == 1)
            launched = time.monotonic()
            time.sleep(0.8)
            stopped = [t for t in kicks if t > launched + 0.35]
            assert not stopped, "the watchdog was kicked while a batch hung"
            assert any(launched <= t < launched + 0.25 for t in kicks)  # kicked while it was young
            est.gates[0].set()
            assert reply(sock)[:2] == (Status.OK, 0)
            wait_until("kicks again", lambda: kicks[-1] > launched + 0.8)
    finally:
        for gate in est.gates:
            gate.set()
        server.stop()
        thread.join(5)


def test_batches_in_flight_is_bounded_by_the_setting_and_by_the_engine():
    """[backend] batches_in_flight 1 waits for each batch (no slots used); more than the engine has (the
    stand-in's 2) uses what it has; max_batch 1 is serial whatever the engine offers."""
    cases = [({"max_batch": 8, "batches_in_flight": 1}, 0), ({"max_batch": 8, "batches_in_flight": 4}, 2)]
    cases.append(({"max_batch": 1, "batches_in_flight": 2}, 0))
    for kwargs, slots in cases:
        server = InferenceServer(AsyncBatchingEstimator(0.0), "127.0.0.1", 0, 1 << 20, **kwargs)  # type: ignore[arg-type]
        try:
            assert server.slots == slots, kwargs
        finally:
            server.close()
