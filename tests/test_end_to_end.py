"""Edge and backend as real processes over real loopback sockets with the real model."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from support import Backend, free_port, lalelu_cmd, run_local_edge

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes


def test_edge_and_backend_processes(tmp_path):
    backend = Backend(tmp_path, "--cpus", "1")
    telemetry = tmp_path / "telemetry.jsonl"
    summary_file = tmp_path / "summary.json"
    try:
        edge = subprocess.Popen(
            lalelu_cmd(
                "edge",
                "--backend",
                backend.address,
                "--cpus",
                "0",
                "--no-fifo",
                "--fps",
                "30",
                "--seconds",
                "4",
                "--telemetry",
                str(telemetry),
                "--json",
                str(summary_file),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        time.sleep(2.0)
        # The pinning as the kernel sees it in the live processes.
        assert psutil.Process(backend.proc.pid).cpu_affinity() == [1]
        assert psutil.Process(edge.pid).cpu_affinity() == [0]
        out, err = edge.communicate(timeout=60)
        assert edge.returncode == 0, err.decode()
    finally:
        backend.stop()
    summary = json.loads(summary_file.read_text())
    line = json.loads(out.decode().strip().splitlines()[-1])
    assert line["frames_inferred"] == summary["frames_inferred"] >= 100
    assert summary["poses_received"] == summary["frames_inferred"]
    rows = [json.loads(r) for r in telemetry.read_text().splitlines()]
    seqs = [r["seq"] for r in rows]
    assert all(b > a for a, b in itertools.pairwise(seqs))  # answered in order
    holes = seqs[-1] - seqs[0] + 1 - len(seqs)  # frames skipped for the latency budget or never read
    assert holes <= summary["frames_skipped"] + summary["frames_dropped_at_capture"]
    assert len(rows) == summary["frames_inferred"]  # every frame sent was answered
    for r in rows:
        assert r["capture_ns"] <= r["sent_ns"] <= r["pose_ns"]
        assert 0 < r["backend_infer_ns"] <= r["backend_total_ns"] < r["pose_ns"] - r["sent_ns"]
    captures = [r["capture_ns"] for r in rows]
    assert all(b > a for a, b in itertools.pairwise(captures))
    # The still photo moves with a period of 1 s: its nose must move too, and the reply carried it.
    assert summary["latency_ms"]["p50"] > summary["inference_ms"]["p50"] > 0


def test_edge_without_backend_infers_locally(tmp_path):
    summary_file = tmp_path / "s.json"
    r = run_local_edge(20, 2, "--threads", "1", "--json", str(summary_file))
    assert "inferring locally" in r.stderr.decode()
    s = json.loads(summary_file.read_text())
    assert s["poses_received"] == s["frames_inferred"] >= 30


def test_edge_without_fallback_and_unreachable_backend_says_so():
    port = free_port()
    r = subprocess.run(
        lalelu_cmd("edge", "--backend", f"127.0.0.1:{port}", "--seconds", "1", "--no-fallback"),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 1  # a failed run, not bad input
    assert "cannot reach the backend" in r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


def test_edge_with_unreachable_backend_plays_locally_and_says_so(tmp_path):
    port = free_port()
    summary_file = tmp_path / "edge.json"
    r = subprocess.run(
        lalelu_cmd(
            "edge",
            "--backend",
            f"127.0.0.1:{port}",
            "--seconds",
            "2",
            "--no-fifo",
            "--fps",
            "30",
            "--json",
            str(summary_file),
        ),
        capture_output=True,
        timeout=60,
    )
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "cannot reach the backend" in err and "inferring locally until it answers" in err
    s = json.loads(summary_file.read_text())
    assert s["frames_local"] == s["poses_received"] == s["frames_inferred"] > 20
    assert s["reconnects"] == 0


def test_demo_prints_one_json_line():
    r = subprocess.run(lalelu_cmd("demo", "--seconds", "3", "--quiet"), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert set(result) >= {
        "frames_inferred",
        "poses_received",
        "frames_lost",
        "fps",
        "latency_ms",
        "inference_ms",
        "overhead_ms",
    }
    # Every frame inferred got its pose (how many fit in 3 s depends on this shared machine's load)
    assert result["poses_received"] == result["frames_inferred"] > 0
    assert result["overhead_ms"]["p50"] > 0
    assert abs(result["hits"] - result["hits_expected"]) <= 1  # the nod of the moving photo


def test_the_demo_ends_with_a_verdict_a_person_reads():
    from lalelu.cli.demo import demo_verdict

    good = {
        "poses_received": 998,
        "frames_inferred": 998,
        "frames_lost": 0,
        "hits": 9,
        "hits_expected": 9,
        "latency_ms": {"p50": 12.34, "p99": 24.0},
        "vs_impact": {"impacts": 9, "onsets": 9, "missed": 0, "extra": 0, "mean_ms": 17.04, "sd_ms": 0.03},
    }
    assert demo_verdict(good) == (
        "demo: played as expected: 9 hits, 9 expected (one either way at the ends), each +17.0 ms from the photo's lowest point (SD 0.0), "
        "0 of 998 frames lost, capture to pose p50 12.3 ms, p99 24.0 ms"
    )
    off = dict(good, hits=10, vs_impact=dict(good["vs_impact"], extra=1))
    assert demo_verdict(off).startswith("demo: NOT as expected: 1 extra hit(s): 10 hits, 9 expected")
    far = dict(good, hits=12)
    assert demo_verdict(far).startswith("demo: NOT as expected: 12 hits, 9 expected: ")
    silent = dict(
        good, poses_received=0, hits=0, vs_impact={"impacts": 9, "onsets": 0, "missed": 9, "extra": 0}
    )
    assert "no pose came back" in demo_verdict(silent) and "9 nod(s) without a hit" in demo_verdict(silent)


def test_sound_can_leave_from_the_backend(tmp_path):
    """[output] where = "backend": the backend runs the gestures and sends OSC; a real UDP socket hears it."""
    import socket

    from pythonosc.osc_packet import OscPacket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        cfg = tmp_path / "backend.toml"
        cfg.write_text(
            f'[output]\nkind = "osc"\nwhere = "backend"\nmapping = "demo-nod"\nosc_port = {rx.getsockname()[1]}\n'
        )
        backend = Backend(tmp_path, "--config", str(cfg))
        try:
            r = subprocess.run(
                lalelu_cmd(
                    "edge",
                    "--backend",
                    backend.address,
                    "--no-fifo",
                    "--fps",
                    "50",
                    "--seconds",
                    "3",
                    "--output",
                    "none",
                ),
                capture_output=True,
                timeout=60,
            )
            assert r.returncode == 0, r.stderr.decode()
            # A hit due later (its impact + [output] latency_ms) comes as a time-tagged bundle.
            msg = OscPacket(rx.recv(1024)).messages[0].message
        finally:
            backend.stop()
    assert msg.address == "/lalelu/hit"
    assert msg.params[0] == "nod" and msg.params[1] == 36


def test_backend_serves_only_the_clients_in_its_allow_list(tmp_path):
    import socket

    import numpy as np

    from lalelu.frames import PixelFormat
    from lalelu.wire.protocol import Status, encode_frame_header, round_trip

    frame = np.full((240, 320, 3), 90, np.uint8).tobytes()
    header = encode_frame_header(1, 1, PixelFormat.RGB888, 320, 240, len(frame))
    out = np.zeros((17, 3), np.float32)
    for allowed, served in (("127.0.0.1", True), ("192.0.2.7", False)):
        config = tmp_path / f"backend-{allowed}.toml"
        config.write_text(f'[backend]\nlisten_host = "127.0.0.1"\nallow = ["{allowed}"]\n')
        backend = Backend(tmp_path, "--config", str(config))
        try:
            with socket.create_connection(("127.0.0.1", backend.port), timeout=10) as sock:
                if served:
                    assert round_trip(sock, header, frame, out).status == Status.OK
                else:
                    with pytest.raises(OSError):  # closed unanswered (ConnectionError is an OSError)
                        round_trip(sock, header, frame, out)
        finally:
            backend.stop()
        if not served:
            assert "refused 127.0.0.1" in (tmp_path / "backend.log").read_text()


def test_version_and_python_dash_m():
    from lalelu import __version__

    for cmd in (lalelu_cmd("--version"), [sys.executable, "-m", "lalelu", "--version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == f"lalelu {__version__}", r


def test_a_backend_out_of_file_descriptors_keeps_serving_its_edge(tmp_path):
    """Any host allowed to connect could stop the instrument by opening connections until the backend has
    no descriptor left: accept() failed with EMFILE and the backend exited. Now it warns, closes the
    quietest connection, and an edge that plays (a frame every 20 ms) is served throughout."""
    import contextlib
    import socket
    import threading

    import numpy as np

    from lalelu.frames import PixelFormat
    from lalelu.wire.protocol import encode_frame_header, round_trip

    backend = Backend(tmp_path, max_files=24)  # below the 32 connections it would allow
    host, port = "127.0.0.1", backend.port
    flood: list[socket.socket] = []
    flooding = threading.Event()

    def open_connections() -> None:
        # far more than the backend has descriptors for, from 150 hosts (one host holds at most 4)
        for i in range(150):
            with contextlib.suppress(OSError):  # the listen backlog is full: what a flood looks like
                source = (f"127.0.1.{i + 1}", 0)
                flood.append(socket.create_connection((host, port), timeout=0.5, source_address=source))
        flooding.set()

    try:
        with socket.create_connection((host, port), timeout=10) as edge:
            frame = np.zeros((48, 64, 3), np.uint8).tobytes()
            out = np.zeros((17, 3), np.float32)
            attacker = threading.Thread(target=open_connections)
            attacker.start()
            seq = 0
            while not flooding.is_set() or seq < 50:
                reply = round_trip(edge, encode_frame_header(seq, 1, PixelFormat.RGB888, 64, 48), frame, out)
                assert reply.seq == seq and int(reply.status) == 0
                seq += 1
                time.sleep(0.02)
            attacker.join()
        assert backend.proc.poll() is None, "the backend exited"
        log_text = (tmp_path / "backend.log").read_text()
        assert "cannot accept a connection: Too many open files" in log_text
        assert "Traceback" not in log_text
    finally:
        for s in flood:
            s.close()
        backend.stop()
    assert backend.proc.returncode == 0
