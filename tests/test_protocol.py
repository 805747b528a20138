"""Wire protocol: round trip, malformed input, and a live server that survives it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lalelu.backend.server import InferenceServer
from lalelu.engine.estimator import PoseEstimator
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.wire.protocol import (
    FRAME_HEADER,
    REPLY_SIZE,
    ProtocolError,
    Status,
    encode_frame_header,
    encode_reply_into,
    parse_frame_header,
    parse_reply_into,
)

MAX_PAYLOAD = 640 * 480 * 3


def test_frame_header_round_trip():
    raw = encode_frame_header(42, 123_456_789, PixelFormat.YUV420, 320, 240)
    h = parse_frame_header(raw)
    assert (h.seq, h.capture_ns, h.pixel_format, h.width, h.height, h.payload_len) == (
        42,
        123_456_789,
        PixelFormat.YUV420,
        320,
        240,
        320 * 240 * 3 // 2,
    )


@given(
    fmt=st.sampled_from(list(PixelFormat)),
    half_w=st.integers(1, 960),
    half_h=st.integers(1, 540),
)
def test_frame_format_is_the_wire_s_size(fmt, half_w, half_h):
    """A frame's array holds exactly the bytes its header announces, and the wire takes no other size."""
    ff = FrameFormat(fmt, 2 * half_w, 2 * half_h)
    assert np.empty(ff.shape, np.uint8).nbytes == ff.nbytes
    limit = 4096 * 4096 * 3
    header = parse_frame_header(encode_frame_header(1, 0, fmt, ff.width, ff.height), limit)
    assert header.payload_len == ff.nbytes
    with pytest.raises(ProtocolError, match="payload"):
        parse_frame_header(encode_frame_header(1, 0, fmt, ff.width, ff.height, ff.nbytes + 1), limit)


def test_reply_round_trip():
    kp = np.arange(51, dtype=np.float32).reshape(17, 3)
    buf = bytearray(REPLY_SIZE)
    encode_reply_into(buf, Status.OK, 7, 1, 2, 3, 4, kp)
    out = np.zeros((17, 3), np.float32)
    r = parse_reply_into(buf, out)
    assert (r.status, r.seq, r.recv_ns, r.infer_start_ns, r.infer_end_ns, r.send_ns) == (
        Status.OK,
        7,
        1,
        2,
        3,
        4,
    )
    np.testing.assert_array_equal(out, kp)


@pytest.mark.parametrize(
    ("mutate", "fatal", "reason"),
    [
        (lambda f: (b"XXXX", *f[1:]), True, "bad magic"),
        (lambda f: (f[0], 9, *f[2:]), True, "protocol version 9"),
        (lambda f: (*f[:8], 2**32 - 1), True, "exceeds the limit"),
        (lambda f: (f[0], f[1], 77, *f[3:]), False, "unknown pixel format"),
        (lambda f: (*f[:6], 0, f[7], f[8]), False, "outside"),
        (lambda f: (*f[:8], 100), False, "does not match"),
        (lambda f: (*f[:5], -5, *f[6:]), False, "negative capture"),
    ],
)
def test_bad_headers_name_the_problem(mutate, fatal, reason):
    fields = list(FRAME_HEADER.unpack(encode_frame_header(1, 5, PixelFormat.RGB888, 64, 48)))
    raw = FRAME_HEADER.pack(*mutate(fields))
    with pytest.raises(ProtocolError, match=reason) as err:
        parse_frame_header(raw, MAX_PAYLOAD)
    assert err.value.fatal is fatal


def test_truncated_header_is_fatal():
    with pytest.raises(ProtocolError, match="expected 32"):
        parse_frame_header(encode_frame_header(1, 5, PixelFormat.RGB888, 64, 48)[:20])


@given(st.binary(min_size=FRAME_HEADER.size, max_size=FRAME_HEADER.size))
def test_any_header_bytes_parse_or_raise_protocol_error(raw):
    try:
        h = parse_frame_header(raw, MAX_PAYLOAD)
    except ProtocolError:
        return
    assert h.payload_len <= MAX_PAYLOAD  # anything accepted is bounded before allocation


class LiveServer:
    def __init__(self, engine):
        self.server = InferenceServer(PoseEstimator(engine), "127.0.0.1", 0, MAX_PAYLOAD)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.address = self.server.address

    def stop(self):
        self.server.stop()
        self.thread.join(5)


@pytest.fixture(scope="module")
def live_server():
    from lalelu.engine import BUNDLED_MODEL, create_engine

    engine = create_engine("litert", BUNDLED_MODEL, threads=1)
    s = LiveServer(engine)
    yield s
    s.stop()


def good_round_trip(address, seq: int) -> tuple[int, int]:
    frame = np.full((48, 64, 3), 100, np.uint8)
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(encode_frame_header(seq, 1, PixelFormat.RGB888, 64, 48) + frame.tobytes())
        data = recv_exactly(sock, REPLY_SIZE)
    r = parse_reply_into(data, np.zeros((17, 3), np.float32))
    return r.seq, int(r.status)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:  # closed with our unread junk in its buffer: a reset, not a FIN
            break
        if not chunk:
            break
        buf += chunk
    return buf


def test_rejected_frame_is_answered_and_connection_stays_up(live_server):
    with socket.create_connection(live_server.address, timeout=5) as sock:
        bad = encode_frame_header(5, 1, PixelFormat.RGB888, 64, 48, payload_len=10) + b"0123456789"
        good = encode_frame_header(6, 1, PixelFormat.RGB888, 64, 48) + bytes(64 * 48 * 3)
        sock.sendall(bad + good)
        out = np.zeros((17, 3), np.float32)
        first = parse_reply_into(recv_exactly(sock, REPLY_SIZE), out)
        second = parse_reply_into(recv_exactly(sock, REPLY_SIZE), out)
    assert (first.seq, first.status) == (5, Status.BAD_FRAME)
    assert (second.seq, second.status) == (6, Status.OK)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda magic, ver, fmt, w, h, length, tail: (
                struct.pack("<4sHBBQqHHI", magic, ver, fmt, 0, 1, 1, w, h, length) + tail
            ),
            st.sampled_from([b"LLDF", b"LLDX"]),
            st.sampled_from([1, 2]),
            st.integers(0, 255),
            st.integers(0, 65535),
            st.integers(0, 65535),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=64),
        ),
    )
)
def test_server_survives_malformed_streams(live_server, junk):
    with socket.create_connection(live_server.address, timeout=5) as sock:
        sock.sendall(junk)
    assert good_round_trip(live_server.address, 99) == (99, 0)


def test_bad_packets_are_counted(live_server):
    before = live_server.server.counters.bad_packets
    with socket.create_connection(live_server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(10))
        assert recv_exactly(sock, 1) == b""  # the server closes an unframeable stream
    assert live_server.server.counters.bad_packets == before + 1


def test_two_edges_at_once_each_get_their_own_answers(live_server):
    frame = bytes(64 * 48 * 3)
    a = socket.create_connection(live_server.address, timeout=5)
    b = socket.create_connection(live_server.address, timeout=5)
    with a, b:
        for i in range(5):
            a.sendall(encode_frame_header(100 + i, 1, PixelFormat.RGB888, 64, 48) + frame)
            b.sendall(encode_frame_header(200 + i, 1, PixelFormat.RGB888, 64, 48) + frame)
            if i == 4:
                b.sendall(b"\xff" * 7)  # b turns bad after its last frame: a must not notice
        out = np.zeros((17, 3), np.float32)
        got_a = [parse_reply_into(recv_exactly(a, REPLY_SIZE), out).seq for _ in range(5)]
        got_b = [parse_reply_into(recv_exactly(b, REPLY_SIZE), out).seq for _ in range(5)]
    assert got_a == [100, 101, 102, 103, 104]
    assert got_b == [200, 201, 202, 203, 204]
    assert good_round_trip(live_server.address, 7) == (7, 0)


class SlowEstimator:
    """Stands in for an engine that takes a while per frame (an emulated CPU, a cold GPU)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.pre_ns = self.engine_ns = self.post_ns = 0
        self.device_ns = -1

    def frame_buffer(self, fmt, width, height):
        return np.empty(FrameFormat(fmt, width, height).shape, np.uint8)

    def estimate(self, pixels, fmt, width, height, out) -> None:
        time.sleep(self.seconds)
        out[:] = 0


@pytest.fixture
def slow_server():
    server = InferenceServer(SlowEstimator(0.05), "127.0.0.1", 0, MAX_PAYLOAD)  # type: ignore[arg-type]
    ticks: list[float] = []
    thread = threading.Thread(
        target=server.serve, kwargs={"on_tick": lambda _s: ticks.append(time.monotonic()), "tick_s": 0.1}
    )
    thread.start()
    yield server, ticks
    server.stop()
    thread.join(5)


def test_an_edge_with_frames_queued_does_not_hold_the_loop(slow_server):
    server, ticks = slow_server
    frame = bytes(64 * 48 * 3)
    greedy = socket.create_connection(server.address, timeout=10)
    other = socket.create_connection(server.address, timeout=10)
    with greedy, other:
        greedy.sendall(
            b"".join(encode_frame_header(i, 1, PixelFormat.RGB888, 64, 48) + frame for i in range(20))
        )
        time.sleep(0.1)  # the greedy edge's frames are queued in the server's socket
        ticks_before = len(ticks)
        other.sendall(encode_frame_header(500, 1, PixelFormat.RGB888, 64, 48) + frame)
        out = np.zeros((17, 3), np.float32)
        assert parse_reply_into(recv_exactly(other, REPLY_SIZE), out).seq == 500
        answered_greedy = 0
        greedy.settimeout(0.0)
        with contextlib.suppress(BlockingIOError):
            answered_greedy = len(greedy.recv(20 * REPLY_SIZE)) // REPLY_SIZE
        ticks_during = len(ticks) - ticks_before
        greedy.settimeout(10)
        rest = recv_exactly(greedy, (20 - answered_greedy) * REPLY_SIZE)
    # served in turn: the other edge waited for a few of the greedy edge's frames, not for all 20
    assert answered_greedy < 10, f"{answered_greedy} greedy frames answered before the other edge's one"
    assert len(rest) == (20 - answered_greedy) * REPLY_SIZE
    assert ticks_during >= 1, "the loop's periodic work (watchdog, reports) waited for a queue of frames"


def test_a_client_that_stops_mid_frame_is_dropped(slow_server, monkeypatch):
    import lalelu.backend.admission as admission_module

    monkeypatch.setattr(admission_module, "STALL_S", 0.3)
    server, _ticks = slow_server
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(encode_frame_header(1, 1, PixelFormat.RGB888, 64, 48) + bytes(100))
        assert recv_exactly(sock, 1) == b""  # closed by the server within its sweep
    assert server.counters.dropped_clients == 1


def test_connections_beyond_the_limit_are_refused_and_the_rest_served(slow_server, monkeypatch):
    import lalelu.backend.admission as admission_module

    monkeypatch.setattr(admission_module, "MAX_CONNECTIONS", 3)
    server, _ticks = slow_server
    held = [socket.create_connection(server.address, timeout=5) for _ in range(3)]
    try:
        with socket.create_connection(server.address, timeout=5) as extra:
            assert recv_exactly(extra, 1) == b""
        frame = encode_frame_header(9, 1, PixelFormat.RGB888, 64, 48) + bytes(64 * 48 * 3)
        held[0].sendall(frame)
        assert parse_reply_into(recv_exactly(held[0], REPLY_SIZE), np.zeros((17, 3), np.float32)).seq == 9
    finally:
        for s in held:
            s.close()


def _link_to(server, replies: list[int], **options):
    """A BackendLink to the test server, 4 frames in flight, 5 s reply timeout; reply seqs into `replies`."""
    from lalelu.wire.link import BackendLink

    return BackendLink(
        socket.create_connection(server.address, timeout=5),
        "test",
        lambda r: replies.append(r.seq),
        max_in_flight=4,
        reply_timeout_s=5.0,
        **options,
    )


def _stream_through_link(server, budget_ms: float, frames: int = 40, fps: float = 100.0):
    replies: list[int] = []
    link = _link_to(server, replies, latency_budget_ms=budget_ms)
    frame = np.zeros((48, 64, 3), np.uint8)
    sent = []
    for seq in range(frames):
        if link.send(seq, 1, PixelFormat.RGB888, 64, 48, frame):
            sent.append(seq)
        time.sleep(1 / fps)
    link.in_flight_done(5.0)
    link.close()
    return link, sent, replies


def test_latency_budget_skips_frames_that_would_queue(slow_server):
    """A backend slower than the camera (50 ms a frame at 100 fps): with a 20 ms budget the edge keeps one
    frame in flight and skips the rest, so no frame waits behind another; without one, frames queue."""
    server, _ticks = slow_server
    link, sent, replies = _stream_through_link(server, budget_ms=20.0)
    assert link.skipped == 40 - len(sent) > 20
    assert replies == sent  # every frame sent was answered, in order
    queued, queued_sent, _ = _stream_through_link(server, budget_ms=0.0, frames=12)
    assert queued.skipped == 0 and len(queued_sent) == 12


def test_latency_budget_still_notices_a_hung_backend(slow_server):
    from lalelu.wire.link import BackendLink, BackendUnavailable

    server, _ticks = slow_server
    server.estimator.seconds = 1.0  # hangs, as far as a 0.2 s reply timeout can tell
    link = BackendLink(
        socket.create_connection(server.address, timeout=5), "test", lambda r: None, 4, 0.2, 20.0
    )
    frame = np.zeros((48, 64, 3), np.uint8)
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"answered nothing for 0\.2 s"):
        for seq in range(500):
            link.send(seq, 1, PixelFormat.RGB888, 64, 48, frame)
            time.sleep(0.01)
    assert time.monotonic() - start < 3.0  # not after the 500 frames (5 s)
    link.close()


def test_idle_clients_give_their_place_to_an_edge_and_time_out(slow_server, monkeypatch):
    import lalelu.backend.admission as admission_module

    monkeypatch.setattr(admission_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(admission_module, "ROOM_AFTER_S", 0.2)
    monkeypatch.setattr(admission_module, "IDLE_S", 2.0)
    server, _ticks = slow_server
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(4)]  # the backend is full
    time.sleep(0.4)

    def closed_by_server(s: socket.socket) -> bool:
        s.setblocking(False)
        try:
            return s.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        finally:
            s.settimeout(5)

    out = np.zeros((17, 3), np.float32)
    try:
        with socket.create_connection(server.address, timeout=5) as edge:
            seq = 0
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:  # an edge plays: a frame every 0.3 s keeps it from idling out
                edge.sendall(encode_frame_header(seq, 1, PixelFormat.RGB888, 64, 48) + bytes(64 * 48 * 3))
                assert parse_reply_into(recv_exactly(edge, REPLY_SIZE), out).seq == seq
                closed = sum(closed_by_server(s) for s in idle)
                if seq == 0:
                    assert closed == 1  # one idle client made room for the edge
                if closed == len(idle):
                    break  # the others timed out after IDLE_S, the edge is still served
                seq += 1
                time.sleep(0.3)
            assert closed == len(idle) and seq >= 5
    finally:
        for s in idle:
            s.close()


def test_waiting_for_a_slot_keeps_the_watchdog_fed_until_the_reply_timeout():
    """With every frame queued (budget 0), a slow backend holds the loop in `send` for up to
    reply_timeout_s: systemd's watchdog must hear from it meanwhile, or it restarts a working edge."""
    from lalelu.wire.link import BackendLink, BackendUnavailable

    ours, silent_backend = socket.socketpair()
    kicks = []
    link = BackendLink(
        ours, "test:1", lambda reply: None, 1, 1.2, latency_budget_ms=0, keepalive=lambda: kicks.append(1)
    )
    frame = np.zeros((24, 32, 3), np.uint8)
    try:
        assert link.send(0, 0, PixelFormat.RGB888, 32, 24, frame)  # the one slot
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"answered nothing for 1\.2 s"):
            link.send(1, 0, PixelFormat.RGB888, 32, 24, frame)
        assert 1.1 < time.monotonic() - t0 < 5
        assert len(kicks) >= 2  # every half second of the wait
    finally:
        link.close()
        silent_backend.close()


def test_busy_polling_server_polls_after_a_frame_then_sleeps_again():
    """[backend] busy_poll_ms: after a frame the loop asks select without sleeping until the window ends,
    then sleeps in select again; it serves and stops as the sleeping one does."""
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, MAX_PAYLOAD, busy_poll_s=0.2)  # type: ignore[arg-type]
    timeouts: list[tuple[float, float]] = []  # (when, timeout) of every select
    real_select = server._sel.select

    def select(timeout=None):
        timeouts.append((time.monotonic(), timeout))
        return real_select(timeout)

    server._sel.select = select  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        assert {t for _, t in timeouts} == {0.2}, "an idle server sleeps in select"
        # The window opens at the connection's accept or at the frame, whichever the loop sees first.
        sent = time.monotonic()
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(encode_frame_header(3, 1, PixelFormat.RGB888, 64, 48) + bytes(64 * 48 * 3))
            assert parse_reply_into(recv_exactly(sock, REPLY_SIZE), np.zeros((17, 3), np.float32)).seq == 3
            time.sleep(0.6)
            # before the close: the edge closing is an event too, and opens a window of its own
            before_close = list(timeouts)
        polls = [when for when, t in before_close if t == 0.0]
        assert len(polls) > 100, "no busy polling after the frame"
        assert sent < polls[0] and polls[-1] - polls[0] < 0.5  # the window, then asleep again
        assert before_close[-1][1] == 0.2
    finally:
        server.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_busy_polling_link_gets_every_reply_and_closes_promptly(slow_server):
    """[edge] busy_poll_ms: the receiver waits for a send, then polls for the reply; replies arrive in
    order, a backend that goes away is reported at the next send, and close() does not wait for a poll."""
    from lalelu.wire.link import BackendUnavailable

    server, _ticks = slow_server
    server.estimator.seconds = 0.01
    replies: list[int] = []
    link = _link_to(server, replies, busy_poll_ms=50.0)
    frame = np.zeros((48, 64, 3), np.uint8)
    for seq in range(20):
        assert link.send(seq, 1, PixelFormat.RGB888, 64, 48, frame)
        time.sleep(0.02 if seq % 2 else 0.1)  # replies within and beyond the polling window
    assert link.in_flight_done(5.0)
    assert replies == list(range(20))
    server.stop()  # the backend goes away while nothing is in flight
    time.sleep(0.5)
    with pytest.raises(BackendUnavailable):
        for seq in range(20, 30):
            link.send(seq, 1, PixelFormat.RGB888, 64, 48, frame)
            time.sleep(0.1)
    start = time.monotonic()
    link.close()
    assert time.monotonic() - start < 1.0


def _lying_backend(sock: socket.socket, lie: str) -> None:
    """Answers each frame well-formed, but with `lie`: another sequence, NaN or off-frame keypoints, or
    timestamps that run backwards."""
    out = bytearray(REPLY_SIZE)
    with contextlib.suppress(OSError):
        while True:
            header = recv_exactly(sock, FRAME_HEADER.size)
            if len(header) < FRAME_HEADER.size:
                return
            h = parse_frame_header(header, MAX_PAYLOAD)
            seq, width, height = h.seq, h.width, h.height
            recv_exactly(sock, h.payload_len)
            kp = np.tile(np.array([width / 2, height / 2, 0.9], np.float32), (17, 1))
            recv_ns, send_ns = 1000, 2000
            if lie == "sequence":
                seq += 1000
            elif lie == "largest sequence":
                seq = 2**64 - 1
            elif lie == "nan":
                kp[3, 0] = np.nan
            elif lie == "infinity":
                kp[5, 2] = np.inf
            elif lie == "off the frame":
                kp[0, 1] = 1e9
            elif lie == "backwards":
                recv_ns, send_ns = 2000, 1000
            encode_reply_into(out, Status.OK, seq, recv_ns, recv_ns, send_ns, send_ns, kp)
            sock.sendall(out)


@pytest.mark.parametrize(
    ("lie", "reason"),
    [
        ("sequence", "answered frame 1000, but the oldest frame in flight is 0"),
        ("largest sequence", "answered frame 18446744073709551615"),
        ("nan", "not finite"),
        ("infinity", "not finite"),
        ("off the frame", "outside the 32x24 frame"),
        ("backwards", "spans -1000 ns"),
    ],
)
def test_a_lying_backend_is_not_believed_and_is_left_like_a_lost_one(lie, reason):
    from lalelu.wire.link import BackendDistrusted, BackendLink

    ours, theirs = socket.socketpair()
    liar = threading.Thread(target=_lying_backend, args=(theirs, lie), daemon=True)
    liar.start()
    believed = []
    link = BackendLink(ours, "liar:1", believed.append, 2, 2.0)
    frame = np.zeros((24, 32, 3), np.uint8)
    try:
        # Distrusted, not only lost: the edge asks it again only after a hold (below).
        with pytest.raises(BackendDistrusted, match="reply not believed: .*" + reason.replace(".", r"\.")):
            for seq in range(50):
                link.send(seq, 1, PixelFormat.RGB888, 32, 24, frame)
                time.sleep(0.01)
        assert believed == []  # no pose of the liar reached the edge
    finally:
        link.close()
        theirs.close()


def test_an_honest_reply_is_believed():
    from lalelu.wire.link import BackendLink

    ours, theirs = socket.socketpair()
    threading.Thread(target=_lying_backend, args=(theirs, "none"), daemon=True).start()
    believed = []
    link = BackendLink(ours, "honest:1", believed.append, 2, 2.0)
    frame = np.zeros((24, 32, 3), np.uint8)
    try:
        for seq in range(5):
            link.send(seq, 1, PixelFormat.RGB888, 32, 24, frame)
        assert link.in_flight_done(2.0) and not link.error
        assert [r.seq for r in believed] == list(range(5))
    finally:
        link.close()
        theirs.close()


def test_a_backend_that_lied_is_asked_again_only_after_a_doubling_hold(slow_server):
    """A liar that answers the probe honestly would otherwise be taken back at once, again and again."""
    from lalelu.edge.failover import LIE_HOLD_MAX_S, LIE_HOLD_S, Reconnector, distrust_hold_s

    assert [distrust_hold_s(n) for n in (1, 2, 3)] == [LIE_HOLD_S, 2 * LIE_HOLD_S, 4 * LIE_HOLD_S]
    assert distrust_hold_s(8) == distrust_hold_s(10**6) == LIE_HOLD_MAX_S
    server, _ticks = slow_server
    address = f"127.0.0.1:{server.address[1]}"
    reconnector = Reconnector(address, PixelFormat.RGB888, 64, 48, 5.0, first_delay_s=0.05)
    try:
        t0 = time.monotonic()
        reconnector.start(hold_s=1.0)
        sock = None
        while sock is None and time.monotonic() - t0 < 10:
            sock = reconnector.take()
            time.sleep(0.01)
        assert sock is not None, "the honest backend was never taken back"
        assert time.monotonic() - t0 >= 1.0  # not before the hold
        sock.close()
        t0 = time.monotonic()
        reconnector.start()  # a plain loss: at once
        while (sock := reconnector.take()) is None and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert sock is not None and time.monotonic() - t0 < 1.0
        sock.close()
    finally:
        reconnector.close()


def test_an_edge_connects_from_its_source_address_and_a_foreign_one_is_named(live_server):
    """[edge] source_address: the backend sees the edge at that address (its shares count per address);
    an address this machine does not have is refused with the key's name and the fix."""
    from lalelu.wire.link import BackendUnavailable, connect_backend

    address = f"127.0.0.1:{live_server.address[1]}"
    with connect_backend(address, 5.0, source="127.0.0.7") as sock:
        assert sock.getsockname()[0] == "127.0.0.7"
    with pytest.raises(
        BackendUnavailable, match=r"source_address = '192\.0\.2\.99' is not an address of this"
    ):
        connect_backend(address, 5.0, source="192.0.2.99")


def test_frame_reader_says_what_arrived_byte_by_byte():
    """The wire's side of a backend connection on its own: a frame trickling in a byte at a time, a
    rejected frame (answered after its payload is read past), one without a payload, an unframeable
    stream, a closed peer."""
    from lalelu.wire.framing import FrameReader, Read

    made = []

    def frame_buffer(fmt, w, h):
        made.append((fmt, w, h))
        return np.empty(FrameFormat(fmt, w, h).shape, np.uint8)

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader = FrameReader(MAX_PAYLOAD, frame_buffer)
    try:
        pixels = np.arange(8 * 6 * 3, dtype=np.uint8).tobytes()
        for byte in encode_frame_header(7, 99, PixelFormat.RGB888, 8, 6) + pixels:
            assert reader.read(ours) is Read.MORE
            theirs.sendall(bytes([byte]))
        assert reader.read(ours) is Read.FRAME
        assert reader.last is not None and (reader.last.seq, reader.last.width) == (7, 8)
        assert reader.pixels is not None and reader.pixels.tobytes() == pixels
        assert reader.first_byte_ns <= reader.recv_ns and reader.begun_ns == 0
        # the same geometry again: the same buffer, no new one
        theirs.sendall(encode_frame_header(8, 99, PixelFormat.RGB888, 8, 6) + pixels)
        assert reader.read(ours) is Read.FRAME and made == [(PixelFormat.RGB888, 8, 6)]
        # a payload that does not match its size: rejected at the header, answered once read past
        theirs.sendall(encode_frame_header(9, 99, PixelFormat.RGB888, 8, 6, 10) + bytes(10))
        assert reader.read(ours) is Read.REJECTED and reader.error is not None and reader.error.seq == 9
        assert reader.read(ours) is Read.SKIPPED
        theirs.sendall(encode_frame_header(10, 99, PixelFormat.RGB888, 8, 6, 0))
        assert reader.read(ours) is Read.REJECTED and reader.read(ours) is Read.SKIPPED
        assert reader.error is not None and reader.error.seq == 10 and reader.error.__traceback__ is None
        theirs.sendall(encode_frame_header(11, 99, PixelFormat.RGB888, 8, 6) + pixels)
        assert reader.read(ours) is Read.FRAME and reader.last is not None and reader.last.seq == 11
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(8))
        assert reader.read(ours) is Read.UNFRAMEABLE and reader.error is not None and reader.error.fatal
        theirs.close()
        fresh = FrameReader(MAX_PAYLOAD, frame_buffer)
        assert fresh.read(ours) is Read.CLOSED and fresh.why == "closed by the edge"
    finally:
        ours.close()
