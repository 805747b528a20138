from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import Backend, wait_until

from lalelu.engine import BUNDLED_MODEL


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

    def client_opens() -> bool:  # JACK is up when a client can open a port
        try:
            probe = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="probe")
            probe.open_virtual_port("probe")
            probe.close_port()
            return True
        except Exception:
            return False

    wait_until("JACK starting", client_opens, timeout_s=10, every_s=0.2, alive=proc, context=log.read_text)
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
