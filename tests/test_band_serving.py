"""A band on one backend: several edges' frames inferred together in one engine call, over real sockets.

The batching stand-in below takes the same time for a batch as for one frame (a launch-bound GPU network,
the reason to batch) and writes into each frame's pose a value read from that frame's own pixels, so an
edge can tell its own pose from another's. The real network batched on the CPU is in test_torch_engine."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from test_fair_serving import from_host, serving
from test_protocol import recv_exactly

from backend_app.server import InferenceServer
from lalelu.preprocess import frame_shape
from lalelu.wire import REPLY_SIZE, PixelFormat, Status, encode_frame_header, parse_reply_into

pytestmark = pytest.mark.process
W, H = 32, 24


class BatchingEstimator:
    """Stands in for a batching GPU engine: `seconds` per call whatever the batch; each pose's x column
    is its frame's first pixel value, so the reply shows whose frame it was."""

    max_batch = 16

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[int] = []  # frames per call
        self.pre_ns = self.engine_ns = self.post_ns = 0
        self.device_ns = -1

    def frame_buffer(self, fmt, width, height):
        return np.empty(frame_shape(fmt, width, height), np.uint8)

    def estimate(self, pixels, fmt, width, height, out) -> None:
        self.estimate_batch([pixels], fmt, width, height, out[None])

    def estimate_batch(self, frames, fmt, width, height, out) -> None:
        time.sleep(self.seconds)
        self.calls.append(len(frames))
        for k, frame in enumerate(frames):
            out[k] = 0
            out[k, :, 0] = frame.reshape(-1)[0]


class AsyncBatchingEstimator(BatchingEstimator):
    """Stands in for torch-cuda's slots: up to two batches in flight, each done `seconds` after its launch
    (a GPU runs them side by side); the server polls batch_done and collects."""

    slots = 2

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self._in_flight: dict[int, tuple[float, list[int]]] = {}  # slot -> (done at, first pixels)
        self.most_in_flight = 0

    def launch_batch(self, frames, fmt, width, height) -> int:
        slot = next(s for s in range(self.slots) if s not in self._in_flight)  # StopIteration: none free
        self._in_flight[slot] = (time.monotonic() + self.seconds, [int(f.reshape(-1)[0]) for f in frames])
        self.most_in_flight = max(self.most_in_flight, len(self._in_flight))
        self.calls.append(len(frames))
        return slot

    def batch_done(self, slot: int) -> bool:
        return time.monotonic() >= self._in_flight[slot][0]

    def collect_batch(self, slot, fmt, width, height, out) -> int:
        _, values = self._in_flight.pop(slot)
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


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_band_is_inferred_in_batches_and_each_edge_gets_its_own_poses_in_order(estimator):
    est = estimator(0.02)  # 20 ms a call: four edges at 40 fps would need 80 ms of every 100 serially
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    thread = serving(server)
    results: dict[int, list] = {k: [] for k in range(4)}
    edges = [
        threading.Thread(target=play, args=(server, f"127.0.0.{k + 2}", 10 + k, 40, 40.0, results[k]))
        for k in range(4)
    ]
    try:
        for e in edges:
            e.start()
        for e in edges:
            e.join(30)
    finally:
        server.stop()
        thread.join(5)
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
    thread = serving(server)
    results: dict[int, list] = {k: [] for k in range(3)}
    edges = [
        threading.Thread(target=play, args=(server, f"127.0.0.{k + 2}", 20 + k, 10, 50.0, results[k]))
        for k in range(3)
    ]
    try:
        for e in edges:
            e.start()
        for e in edges:
            e.join(30)
    finally:
        server.stop()
        thread.join(5)
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
    results: dict[int, list] = {k: [] for k in range(3)}
    edges = [
        threading.Thread(target=play, args=(server, f"127.0.0.{k + 2}", 30 + k, 30, 50.0, results[k]))
        for k in range(3)
    ]
    try:
        flooder.start()
        time.sleep(0.2)
        for e in edges:
            e.start()
        for e in edges:
            e.join(30)
    finally:
        stop.set()
        flooder.join(5)
        server.stop()
        thread.join(5)
    for k, got in results.items():
        assert got == [(Status.OK, q, 30 + k) for q in range(30)], k
    assert flood_statuses.count(Status.BUSY) > flood_statuses.count(Status.OK) > 0


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_batch_member_that_drops_its_connection_mid_batch_costs_the_others_nothing(estimator):
    est = estimator(0.5)
    server = InferenceServer(est, "127.0.0.1", 0, 1 << 20, max_batch=8)  # type: ignore[arg-type]
    thread = serving(server)
    two_slots = estimator is AsyncBatchingEstimator
    try:
        busy = [from_host(server, "127.0.0.2"), from_host(server, "127.0.0.6")]
        others = [from_host(server, f"127.0.0.{k}") for k in (3, 4, 5)]
        time.sleep(0.1)
        # t = 0 and 0.05: two frames of 0.5 s each, one after the other: the engine is busy (with two
        # slots, both are) until t = 0.5
        busy[0].sendall(frame(0, 1))
        time.sleep(0.05)
        busy[1].sendall(frame(0, 6))
        time.sleep(0.1)
        for k, sock in enumerate(others):  # t = 0.15: these wait, then go in one batch at t = 0.5
            sock.sendall(frame(0, 2 + k))
        time.sleep(0.6)  # t = 0.75: in the middle of that batch
        gone = others.pop()
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # a reset while its frame is being inferred: its reply cannot be sent
        assert [reply(sock) for sock in busy] == [(Status.OK, 0, 1.0), (Status.OK, 0, 6.0)]
        assert [reply(sock) for sock in others] == [(Status.OK, 0, 2.0), (Status.OK, 0, 3.0)]
        # waiting for each batch, the second busy frame joins the three; with two slots it ran beside
        # the first, and the three went together into the slot that came free first
        assert est.calls[:3] == ([1, 1, 3] if two_slots else [1, 4]), est.calls
        for sock in (*busy, *others):  # the server serves on, the band too
            sock.sendall(frame(1, 7))
        assert [reply(sock)[:2] for sock in (*busy, *others)] == [(Status.OK, 1)] * 4
        for sock in (*busy, *others):
            sock.close()
    finally:
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
