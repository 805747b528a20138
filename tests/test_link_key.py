"""The pre-shared link key: an edge and a backend prove it to each other before a frame is read, over real
sockets, against a real InferenceServer; and every way of getting it wrong ends in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from support import Backend, lalelu_cmd
from test_protocol import SlowEstimator

from lalelu.backend import admission as admission_module
from lalelu.backend.server import InferenceServer
from lalelu.config import config_from_dict, load_link_key
from lalelu.errors import ConfigError
from lalelu.frames import PixelFormat
from lalelu.wire.link import BackendLink, BackendUnavailable, connect_backend
from lalelu.wire.protocol import CHALLENGE, HELLO, Status, encode_frame_header, encode_hello, round_trip

KEY = b"0123456789abcdef0123456789abcdef"
W, H = 32, 24
FRAME = bytes(W * H * 3)


@pytest.fixture
def keyed_server():
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20, key=KEY)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve, kwargs={"tick_s": 0.1}, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(5)


def address_of(server) -> str:
    return f"127.0.0.1:{server.address[1]}"


def one_frame(sock: socket.socket, seq: int = 0):
    header = encode_frame_header(seq, 1, PixelFormat.RGB888, W, H)
    return round_trip(sock, header, FRAME, np.zeros((17, 3), np.float32))


def recv_all(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_without_reply(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_edge_with_the_key_is_served(keyed_server):
    with connect_backend(address_of(keyed_server), 5.0, KEY) as sock:
        for seq in range(3):
            reply = one_frame(sock, seq)
            assert reply.status == Status.OK and reply.seq == seq
    assert keyed_server.counters.frames == 3


def test_an_edge_without_the_key_is_told_so_and_served_nothing(keyed_server):
    with socket.create_connection(keyed_server.address, timeout=5) as sock:
        reply = one_frame(sock, 7)
        assert reply.status == Status.UNAUTHENTICATED and reply.seq == 7
        assert closed_without_reply(sock)
    # The edge's own link names the fix.
    link = BackendLink(socket.create_connection(keyed_server.address, timeout=5), "keyed", print, 2, 2.0)
    try:
        with pytest.raises(BackendUnavailable, match=r"needs the link key: set \[edge\] key_file"):
            for seq in range(20):
                link.send(seq, 1, PixelFormat.RGB888, W, H, np.zeros((H, W, 3), np.uint8))
                time.sleep(0.02)
    finally:
        link.close()
    assert keyed_server.counters.frames == 0


def test_a_wrong_key_is_refused_on_both_sides(keyed_server):
    with pytest.raises(BackendUnavailable, match=r"key_file and .* key_file differ"):
        connect_backend(address_of(keyed_server), 5.0, b"another key, just as long as it")
    assert keyed_server.counters.frames == 0


def test_a_keyed_edge_does_not_trust_a_keyless_backend():
    server = InferenceServer(SlowEstimator(0.0), "127.0.0.1", 0, 1 << 20)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(BackendUnavailable, match="closed the connection at the key exchange"):
            connect_backend(address_of(server), 5.0, KEY)
    finally:
        server.stop()
        thread.join(5)


def test_a_recorded_or_reflected_exchange_does_not_pass(keyed_server):
    """An eavesdropper replays an honest edge's hello and proof; a keyless peer sends back the
    backend's own proof. Each new connection gets a fresh nonce, and the two proofs are labelled apart."""
    # Record an honest exchange.
    honest = socket.create_connection(keyed_server.address, timeout=5)
    sent: list[bytes] = []
    real_sendall = honest.sendall

    class Recorder:
        def __getattr__(self, name):
            return getattr(honest, name)

        def sendall(self, data):
            sent.append(bytes(data))
            return real_sendall(data)

    from lalelu.wire.protocol import authenticate

    authenticate(Recorder(), KEY)
    assert one_frame(honest).status == Status.OK
    honest.close()
    hello, proof = sent
    with socket.create_connection(keyed_server.address, timeout=5) as replay:
        replay.sendall(hello)
        assert len(recv_all(replay, CHALLENGE.size)) == CHALLENGE.size  # a new challenge
        replay.sendall(proof + encode_frame_header(0, 1, PixelFormat.RGB888, W, H) + FRAME)
        assert closed_without_reply(replay)
    with socket.create_connection(keyed_server.address, timeout=5) as reflect:
        hello, _nonce = encode_hello()
        reflect.sendall(hello)
        challenge = recv_all(reflect, CHALLENGE.size)
        backend_mac = CHALLENGE.unpack(challenge)[3]
        reflect.sendall(b"LLDP" + challenge[4:8] + backend_mac)  # its own proof, as the edge's
        reflect.sendall(encode_frame_header(0, 1, PixelFormat.RGB888, W, H) + FRAME)
        assert closed_without_reply(reflect)
    assert keyed_server.counters.frames == 1  # the honest one's


def test_a_peer_that_never_finishes_the_exchange_is_dropped_and_keeps_no_one_out(keyed_server, monkeypatch):
    monkeypatch.setattr(admission_module, "STALL_S", 0.5)
    silent = socket.create_connection(keyed_server.address, timeout=5)
    half = socket.create_connection(keyed_server.address, timeout=5)
    half.sendall(encode_hello()[0][: HELLO.size // 2])
    with connect_backend(address_of(keyed_server), 5.0, KEY) as sock:
        assert one_frame(sock).status == Status.OK  # served while the two hang
    assert closed_without_reply(silent) and closed_without_reply(half)
    assert keyed_server.counters.dropped_clients >= 2


def test_the_key_file_and_an_open_backend_are_checked(tmp_path):
    key_file = tmp_path / "link.key"
    with pytest.raises(
        ConfigError,
        match=r"cannot read it \(No such file or directory\); make one with `openssl rand -hex 32",
    ):
        load_link_key(str(key_file), "edge")
    key_file.write_text("short\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="5 bytes, a link key needs at least 16"):
        load_link_key(str(key_file), "edge")
    key_file.write_text(KEY.decode() + "\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="every user can read it; chmod o-r"):
        load_link_key(str(key_file), "backend")
    key_file.chmod(0o640)
    assert load_link_key(str(key_file), "backend") == KEY
    assert load_link_key("", "backend") == b""
    with pytest.raises(ConfigError, match=r"serves anyone on the network: set \[backend\] allow"):
        config_from_dict({"backend": {"listen_host": "0.0.0.0"}})
    assert config_from_dict({"backend": {"listen_host": "0.0.0.0", "key_file": str(key_file)}})
    assert config_from_dict({"backend": {"listen_host": "0.0.0.0", "allow": ["10.0.0.2"]}})


@pytest.mark.process
def test_lalelu_edge_and_backend_with_the_key_and_an_edge_without_it(tmp_path):
    key_file = tmp_path / "link.key"
    key_file.write_text("  " + KEY.decode() + "\n")
    key_file.chmod(0o600)
    base = (
        '[engine]\nkind = "litert"\nthreads = 1\nwarmup = 2\n[camera]\nsource = "still"\nfps = 20\n'
        '[output]\nkind = "log"\n[monitor]\nenabled = false\n'
    )
    backend_cfg = tmp_path / "backend.toml"
    backend_cfg.write_text(base + f'[backend]\nsched_fifo = false\nkey_file = "{key_file}"\n')
    backend = Backend(tmp_path, "--config", str(backend_cfg))
    try:
        results = {}
        for name, key_line in (("keyed", f'key_file = "{key_file}"\n'), ("keyless", "")):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(
                base
                + f'[edge]\nbackend = "{backend.address}"\nsched_fifo = false\nreply_timeout_s = 5\n{key_line}'
            )
            summary = tmp_path / f"{name}.json"
            r = subprocess.run(
                lalelu_cmd("edge", "--config", str(cfg), "--seconds", "3", "--json", str(summary)),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            results[name] = (json.loads(summary.read_text()), r.stderr)
    finally:
        backend.stop()
    keyed, keyed_log = results["keyed"]
    assert keyed["frames_remote"] > 0 and "needs the link key" not in keyed_log, keyed_log
    keyless, keyless_log = results["keyless"]
    assert keyless["frames_local"] > 0, keyless_log  # it plays on its own model, and says why
    assert "needs the link key" in keyless_log, keyless_log
    log = (tmp_path / "backend.log").read_text()
    assert "link key proven" in log and "without the link key" in log, log
