"""Fair and bounded serving against hostile or greedy peers, over real sockets to a real InferenceServer:
a host that floods gets its share and BUSY for the rest, a host holds a bounded number of connections (a
reconnecting edge replaces its own), and strangers stuck in the key exchange cannot keep an edge out.
Other hosts are other loopback addresses (127.0.0.2, ...), as the server tells hosts apart by address."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
from test_link_key import KEY
from test_protocol import SlowEstimator

from lalelu.backend import admission as admission_module
from lalelu.backend.server import InferenceServer
from lalelu.frames import PixelFormat
from lalelu.wire.link import connect_backend
from lalelu.wire.protocol import REPLY_SIZE, Status, encode_frame_header, parse_reply_into, round_trip

pytestmark = pytest.mark.process
W, H = 32, 24
FRAME = bytes(W * H * 3)


def serving(server: InferenceServer):
    thread = threading.Thread(target=server.serve, kwargs={"tick_s": 0.1}, daemon=True)
    thread.start()
    return thread


def from_host(server: InferenceServer, host: str) -> socket.socket:
    return socket.create_connection(server.address, timeout=5, source_address=(host, 0))


def frame(seq: int) -> bytes:
    return encode_frame_header(seq, 1, PixelFormat.RGB888, W, H) + FRAME


def test_a_flooding_host_gets_its_share_and_busy_for_the_rest_while_an_edge_plays():
    server = InferenceServer(SlowEstimator(0.004), "127.0.0.1", 0, 1 << 20, max_fps_per_edge=40.0)  # type: ignore[arg-type]
    thread = serving(server)
    stop = threading.Event()
    statuses: list[int] = []

    def flood() -> None:  # frames back to back, replies read as they come
        with from_host(server, "127.0.0.2") as sock:
            out = np.zeros((17, 3), np.float32)
            seq = 0
            while not stop.is_set():
                sock.sendall(frame(seq))
                statuses.append(parse_reply_into(_recv(sock, REPLY_SIZE), out).status)
                seq += 1

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        time.sleep(0.3)
        edge_ok = 0
        t0 = time.monotonic()
        with from_host(server, "127.0.0.1") as edge:
            for seq in range(30):  # an edge at 30 fps, under its budget
                reply = round_trip(
                    edge,
                    encode_frame_header(seq, 1, PixelFormat.RGB888, W, H),
                    FRAME,
                    np.zeros((17, 3), np.float32),
                )
                edge_ok += reply.status == Status.OK and reply.seq == seq
                time.sleep(1 / 30)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        flooder.join(5)
        server.stop()
        thread.join(5)
    assert edge_ok == 30  # every frame of the edge inferred, none answered BUSY
    inferred = statuses.count(Status.OK)
    busy = statuses.count(Status.BUSY)
    assert busy > inferred > 0, (inferred, busy)  # the flood mostly answered BUSY, not inferred
    # its inferences: at most the budget over the time it flooded, plus one burst
    assert inferred <= 40.0 * (elapsed + 1.0) + server.admission.burst, (inferred, elapsed)
    assert server.counters.over_budget == busy


def test_a_host_holds_at_most_its_connections_and_a_reconnect_replaces_an_idle_one(monkeypatch):
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20)  # type: ignore[arg-type]
    thread = serving(server)
    try:
        held = [from_host(server, "127.0.0.3") for _ in range(admission_module.MAX_PER_ADDRESS)]
        time.sleep(0.2)
        newest = from_host(server, "127.0.0.3")  # the edge again, after its old connection hung
        reply = round_trip(
            newest, encode_frame_header(7, 1, PixelFormat.RGB888, W, H), FRAME, np.zeros((17, 3), np.float32)
        )
        assert reply.status == Status.OK and reply.seq == 7
        held[0].settimeout(5)
        assert held[0].recv(1) == b""  # the oldest of that host's idle connections was closed for it
        others = [from_host(server, "127.0.0.4") for _ in range(2)]  # another host is not counted with it
        for sock in others:
            assert (
                round_trip(
                    sock,
                    encode_frame_header(1, 1, PixelFormat.RGB888, W, H),
                    FRAME,
                    np.zeros((17, 3), np.float32),
                ).status
                == Status.OK
            )
        for sock in [*held, newest, *others]:
            sock.close()
    finally:
        server.stop()
        thread.join(5)


def test_strangers_in_the_key_exchange_cannot_keep_an_edge_out(monkeypatch):
    monkeypatch.setattr(admission_module, "MAX_CONNECTIONS", 16)
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20, key=KEY)  # type: ignore[arg-type]
    thread = serving(server)
    strangers = []
    try:
        # 24 hosts connect and never send their hello (slowloris on the key exchange): more than the
        # server's 16 places, none silent long enough yet to give its place up
        for i in range(24):
            strangers.append(from_host(server, f"127.0.1.{i + 1}"))
        time.sleep(0.3)
        t0 = time.monotonic()
        with connect_backend(f"127.0.0.1:{server.address[1]}", 5.0, KEY) as sock:
            reply = round_trip(
                sock,
                encode_frame_header(3, 1, PixelFormat.RGB888, W, H),
                FRAME,
                np.zeros((17, 3), np.float32),
            )
        admitted_after = time.monotonic() - t0
        assert reply.status == Status.OK and reply.seq == 3
        # admitted at once, not after the strangers' 5-s key exchange limit ran out
        assert admitted_after < admission_module.STALL_S, admitted_after
        pending = sum(c.proving is not None for c in server._connections.values())
        assert pending <= admission_module.MAX_PENDING_KEY
    finally:
        for s in strangers:
            s.close()
        server.stop()
        thread.join(5)


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_a_flood_of_connections_from_the_edges_own_address_never_replaces_the_edge():
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20)  # type: ignore[arg-type]
    thread = serving(server)
    flood: list[socket.socket] = []

    def open_connections() -> None:  # another process on the edge's host, beside the edge
        for _ in range(30):
            with contextlib.suppress(OSError):
                flood.append(from_host(server, "127.0.0.5"))

    try:
        with from_host(server, "127.0.0.5") as edge:
            out = np.zeros((17, 3), np.float32)
            flooder = threading.Thread(target=open_connections)
            for seq in range(150):  # the edge plays at ~100 fps while the flood comes in
                if seq == 5:
                    flooder.start()
                reply = round_trip(edge, encode_frame_header(seq, 1, PixelFormat.RGB888, W, H), FRAME, out)
                assert reply.status == Status.OK and reply.seq == seq
                time.sleep(0.01)
            flooder.join(10)
        own = [c for c in server._connections.values() if c.host == "127.0.0.5"]
        assert len(own) <= admission_module.MAX_PER_ADDRESS
        assert server.counters.dropped_clients > 0  # the flood's connections replaced one another
    finally:
        for s in flood:
            s.close()
        server.stop()
        thread.join(5)
