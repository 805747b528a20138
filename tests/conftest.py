from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lalelu.engine import BUNDLED_MODEL

REFERENCE = {  # ../shared/models/README.md: (x, y) on skimage.data.astronaut(), 512x512
    "nose": (227, 122),
    "left_eye": (248, 103),
    "right_eye": (206, 101),
    "left_shoulder": (313, 258),
    "right_shoulder": (113, 252),
}


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def litert_engine():
    from lalelu.engine import create_engine

    engine = create_engine("litert", BUNDLED_MODEL, threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def lightning_onnx(tmp_path_factory) -> Path:
    """The bundled int8 Lightning as a float ONNX graph with its real weights (tf2onnx --dequantize)."""
    pytest.importorskip("tf2onnx", reason="needs tf2onnx (installed by .ci/run)")
    from lalelu.cli.convert import to_onnx

    return to_onnx(BUNDLED_MODEL, tmp_path_factory.mktemp("onnx") / "lightning.onnx", log=lambda m: None)


def free_port() -> int:
    """A loopback TCP port nothing listens on (for a server the test starts, or an unreachable one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lalelu_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lalelu", *args]


def run_local_edge(
    fps: float, seconds: float, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`lalelu edge` inferring on its own (no backend, no SCHED_FIFO) on the moving photo; asserts it exits 0."""
    r = subprocess.run(
        lalelu_cmd("edge", "--backend", "", "--no-fifo", "--fps", str(fps), "--seconds", str(seconds), *args),
        capture_output=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr.decode()
    return r


class Backend:
    def __init__(self, tmp: Path, *args: str, max_files: int = 0) -> None:
        """`max_files`: the process's open-file limit (RLIMIT_NOFILE), to run it out of descriptors."""
        import resource

        def limit() -> None:
            if max_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        self.ready = tmp / f"ready-{time.monotonic_ns()}.json"
        self.log = open(tmp / "backend.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            lalelu_cmd("backend", "--port", "0", "--ready-file", str(self.ready), "--no-fifo", *args),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=limit,
        )
        from lalelu.cli.demo import wait_until_ready
        from lalelu.errors import LaleluError

        try:
            info = wait_until_ready(self.proc, self.ready)
        except LaleluError as exc:
            pytest.fail(f"{exc}: {(tmp / 'backend.log').read_text()}")
        self.port: int = info["port"]
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def backend(tmp_path):
    b = Backend(tmp_path)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    rtmidi = pytest.importorskip("rtmidi", reason="python-rtmidi is part of the dev extra")
    if shutil.which("jackd") is None:
        pytest.fail(
            "jackd is not installed: tools/test installs Debian's jackd2; run it, or apt install jackd2"
        )
    name = f"lalelu-test-{os.getpid()}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_AUDIO_RESERVATION="1")
    log = tmp_path_factory.mktemp("jack") / "jackd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            # --sync: each cycle waits for every client (up to -t ms): on a busy 2-core machine the
            # non-realtime clients are often late, and in the default asynchronous mode JACK then drops
            # that cycle's MIDI (an xrun: test_recovery saw a note-off reach a second monitor but not
            # the drum module). -t: generous, so a busy machine does not zombify a client.
            [
                "jackd",
                "--no-realtime",
                "--sync",
                "-t",
                "10000",
                "-n",
                name,
                "-d",
                "dummy",
                "-r",
                "48000",
                "-p",
                "128",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    old = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"
    deadline = time.monotonic() + 10
    while True:  # ready when a client can open
        try:
            probe = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="probe")
            probe.open_virtual_port("probe")
            probe.close_port()
            del probe
            break
        except Exception:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "JACK did not start in 10 s:\n" + log.read_text()
            time.sleep(0.2)
    yield name
    proc.terminate()
    proc.wait(10)
    if old is None:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
    else:
        os.environ["JACK_DEFAULT_SERVER"] = old


@pytest.fixture(scope="session")
def rig(tmp_path_factory):
    """The booted "Pi" and "GPU PC", provisioned once for every VM test (tests/vm.py)."""
    import vm

    up = vm.Rig.up(tmp_path_factory.mktemp("rig"))
    try:
        assert up.first_run.returncode == 0, up.first_run.stdout[-8000:] + up.first_run.stderr[-3000:]
        yield up
    finally:
        up.down()
        if os.environ.get("LALELU_KEEP_VM") is None:
            for v in (up.pi, up.pc):
                v.disk.unlink(missing_ok=True)  # 1-2 GB each; the cached images stay


def pytest_collection_modifyitems(config, items):
    """The booted VMs run last: while they run (emulated, each keeps a host CPU busy) the timing of the
    process-level tests would suffer."""
    items.sort(key=lambda item: item.get_closest_marker("vm") is not None)


def pytest_terminal_summary(terminalreporter):
    """The booted VMs' figures (boot, provisioning, drills) in the run's output, where the closing notes
    and the README take them from; a fixture's own print at teardown would be captured and lost."""
    vm = sys.modules.get("vm")
    if vm is not None and vm.FIGURES:
        terminalreporter.write_sep("-", "VM figures")
        terminalreporter.write_line(json.dumps(vm.FIGURES))
