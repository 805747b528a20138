"""`lalelu check`: green on the local demo setup, red with the reason when something is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import lalelu_cmd

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes

DEMO = "lalelu/data/demo.toml"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        lalelu_cmd("check", "--config", DEMO, *args), capture_output=True, text=True, timeout=120
    )


def test_green_with_the_demo_backend_running(backend):
    # a generous latency limit: a busy test machine is no fault of the instrument's
    r = _check("--backend", backend.address, "--max-p99-ms", "2000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "READY TO PLAY" in r.stdout
    assert "go     backend" in r.stdout and "model loaded and answering" in r.stdout
    assert "go     live latency   50 frames: p50" in r.stdout
    assert "go     camera" in r.stdout


def test_red_when_the_backend_is_down(backend):
    address = backend.address
    backend.stop()
    r = _check("--backend", address)
    assert r.returncode == 1
    assert f"NO-GO  backend        {address} unreachable" in r.stdout
    assert "NOT READY: backend" in r.stdout


def test_red_when_the_model_file_is_missing(tmp_path):
    r = _check("--backend", "", "--model", str(tmp_path / "thunder.tflite"))
    assert r.returncode == 1
    assert "NO-GO  model" in r.stdout and "does not exist" in r.stdout
    assert "NOT READY: model" in r.stdout


def test_without_config_the_provisioned_hosts_file_is_read(tmp_path):
    """`sudo lalelu check` on a provisioned host: no paths to type, its /etc/lalelu/edge.toml is used."""
    import os

    (tmp_path / "edge.toml").write_text(
        f'[engine]\nmodel = "{tmp_path}/stage.tflite"\n[edge]\nbackend = ""\n'
    )
    env = dict(os.environ, LALELU_CONFIG_DIR=str(tmp_path))
    r = subprocess.run(lalelu_cmd("check"), capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"configuration: {tmp_path}/edge.toml" in r.stderr
    assert "NO-GO  model" in r.stdout and "stage.tflite" in r.stdout
    r = subprocess.run(
        lalelu_cmd("check", "--role", "backend"), capture_output=True, text=True, timeout=120, env=env
    )
    assert "configuration:" not in r.stderr  # no backend.toml there: the built-in defaults, as before


def test_power_and_heat_reads_the_pi_firmware_flags():
    from lalelu.cli.check import GO, NO_GO, WARN, throttle_check

    assert throttle_check(0x0, 52.0).verdict == GO
    now = throttle_check(0x50005, 61.2)  # under-voltage and throttled now, and since boot
    assert now.verdict == NO_GO and "under-voltage, throttled" in now.detail and "power supply" in now.detail
    hot = throttle_check(0x80008, 83.0)  # soft temperature limit now
    assert hot.verdict == NO_GO and "cool the Pi" in hot.detail
    earlier = throttle_check(0x50000, 48.0)  # under-voltage and throttling happened since boot, not now
    assert earlier.verdict == WARN and "since boot: under-voltage, throttled" in earlier.detail
    assert (
        throttle_check(None, 45.0).verdict == GO and "not a Raspberry Pi" in throttle_check(None, 45.0).detail
    )


def test_a_running_edge_is_judged_from_the_state_file_it_writes(tmp_path):
    """The real edge writes its state at every summary; check reads that, never its log lines."""
    from support import run_local_edge

    from lalelu.cli.check import GO, NO_GO, live_from_state
    from lalelu.runtime.state import read_state

    config = tmp_path / "edge.toml"
    config.write_text(Path(DEMO).read_text().replace("summary_interval_s = 5.0", "summary_interval_s = 0.5"))
    state_file = tmp_path / "state.json"
    run_local_edge(50, 2.5, "--config", str(config), "--state-file", str(state_file))
    state = read_state(state_file)
    assert state is not None and state["mode"] == "local" and state["frames"] > 0, state
    assert 20 < state["fps"] < 80, state  # the last interval's camera rate, near 50
    camera, latency, inference = live_from_state(
        state, fps_wanted=25, p99_limit_ms=500, now=state["time"] + 1
    )
    assert (camera.verdict, latency.verdict, inference.verdict) == (GO, GO, GO), (camera, latency)
    slow = live_from_state(state, fps_wanted=1000, p99_limit_ms=0.001, now=state["time"])
    assert [c.verdict for c in slow[:2]] == [NO_GO, NO_GO]
    stuck = live_from_state(state, 25, 500, now=state["time"] + 60)
    assert stuck[0].verdict == NO_GO and "stuck" in stuck[0].detail
    assert live_from_state(None, 50, 50, 0.0)[0].detail.startswith("the running edge has written no state")
    lost = live_from_state(dict(state, mode="local, reconnecting", backend="pc:7600"), 25, 500, state["time"])
    assert lost[2].detail.startswith("local, reconnecting: the backend pc:7600 does not answer")


def test_a_running_backend_is_judged_by_the_edges_it_serves_from_its_state_file(tmp_path):
    """The real backend rewrites its state every 5 s: the edges that sent frames (each host its own) and
    the frames per engine call; check shows that line, and says so when it is missing, stale or empty."""
    import socket
    import time

    import numpy as np
    from support import Backend

    from lalelu.cli.check import GO, NO_GO, WARN, band_from_state
    from lalelu.frames import PixelFormat
    from lalelu.runtime.state import read_state
    from lalelu.wire.protocol import encode_frame_header, round_trip

    config = tmp_path / "backend.toml"
    state_file = tmp_path / "backend-state.json"
    config.write_text(f'[engine]\nkind = "litert"\nthreads = 1\n[backend]\nstate_file = "{state_file}"\n')
    backend = Backend(tmp_path, "--config", str(config))
    frame = np.zeros((240, 320, 3), np.uint8).tobytes()
    try:
        edges = [
            socket.create_connection(("127.0.0.1", backend.port), timeout=10, source_address=(host, 0))
            for host in ("127.0.0.2", "127.0.0.3")
        ]
        out = np.zeros((17, 3), np.float32)
        deadline = time.monotonic() + 30
        seq = 0
        while time.monotonic() < deadline and not (state_file.exists() and read_state(state_file)["edges"]):
            for sock in edges:
                header = encode_frame_header(seq, time.monotonic_ns(), PixelFormat.RGB888, 320, 240)
                assert round_trip(sock, header, frame, out).seq == seq
            seq += 1
            time.sleep(0.05)
        for sock in edges:
            sock.close()
    finally:
        backend.stop()
    state = read_state(state_file)
    assert state is not None, (tmp_path / "backend.log").read_text()[-2000:]
    assert [e["peer"].split(":")[0] for e in state["edges"]] == ["127.0.0.2", "127.0.0.3"], state
    assert all(e["fps"] > 0 for e in state["edges"]) and state["max_batch"] == 1  # LiteRT: one at a time
    assert state["engine_calls_by_frames"].keys() == {"1"} and state["mean_batch"] == 1.0
    band = band_from_state(state, now=state["time"] + 1)
    assert band.verdict == GO and band.detail.startswith("2 edge(s): 127.0.0.2:"), band
    assert "frames per engine call mean 1.00, up to 1 (of 1)" in band.detail
    assert band_from_state(state, now=state["time"] + 60).verdict == NO_GO
    assert band_from_state(dict(state, edges=[]), now=state["time"]).verdict == WARN
    assert band_from_state(None, now=0.0).detail.startswith("the running backend has written no state")


def test_isolated_cpus_must_be_active_and_hold_the_app():
    from lalelu.cli.check import GO, NO_GO, WARN, isolation_check

    line = "console=tty1 root=PARTUUID=4e639091-02 isolcpus=3 nohz_full=3 rcu_nocbs=3"
    not_active = isolation_check(line, "", {3}, "edge")  # asked for, but this boot did not apply it
    assert not_active.verdict == NO_GO and "isolcpus=3 but none are isolated: reboot" in not_active.detail
    assert isolation_check(line, "3", {3}, "edge").verdict == GO
    elsewhere = isolation_check(line, "3", {1}, "edge")
    assert elsewhere.verdict == WARN and "set [edge] cpus to isolated ones" in elsewhere.detail
    assert isolation_check("isolcpus=domain,managed_irq,2-3", "2-3", {2, 3}, "backend").verdict == GO
    assert isolation_check("quiet", "", set(), "edge").verdict == WARN
