"""`lalelu check`: green on the local demo setup, red with the reason when something is missing."""

from __future__ import annotations

import subprocess

from conftest import lalelu_cmd

DEMO = "lalelu/data/demo.toml"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        lalelu_cmd("check", "--config", DEMO, *args), capture_output=True, text=True, timeout=120
    )


def test_green_with_the_demo_backend_running(backend):
    r = _check("--backend", backend.address)
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
