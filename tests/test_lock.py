"""The hosts' lock files (tools/lock_wheelhouse.py) and how the lalelu_app role picks a host's wheels from
them (its filter plugin): what each kind of host downloads and installs under."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "ansible" / "locks"
_spec = importlib.util.spec_from_file_location(
    "lalelu_lock", ROOT / "ansible/roles/lalelu_app/filter_plugins/lalelu_lock.py"
)
assert _spec and _spec.loader
lalelu_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lalelu_lock)
_tool_spec = importlib.util.spec_from_file_location("lock_wheelhouse", ROOT / "tools/lock_wheelhouse.py")
assert _tool_spec and _tool_spec.loader
lock_wheelhouse = importlib.util.module_from_spec(_tool_spec)
sys.modules["lock_wheelhouse"] = lock_wheelhouse  # its dataclasses look their module up
_tool_spec.loader.exec_module(lock_wheelhouse)
select = lalelu_lock.lalelu_lock_select


def _names(pins: list[str]) -> set[str]:
    return {p.split("==")[0] for p in pins}


def test_every_lock_is_made_from_this_pyproject():
    sha = lock_wheelhouse.dependencies_sha(ROOT / "pyproject.toml")[:16]
    locks = sorted(LOCKS.glob("*.txt"))
    # the booted VMs' and the chroot test's platforms, the README's Pi and PCs
    assert {p.stem for p in locks} >= {
        "cp311-aarch64-glibc2.36-numpy1.24.2",
        "cp311-x86_64-glibc2.36",
        "cp311-x86_64-glibc2.36-numpy1.24.2",
        "cp312-x86_64-glibc2.39",
    }
    for lock in locks:
        assert sha in lock.read_text().splitlines()[1], (
            f"{lock.name} was made from other dependencies in pyproject.toml: run python tools/lock_wheelhouse.py"
        )


def test_locks_pin_a_cuda_12_torch():
    for lock in LOCKS.glob("*.txt"):
        torch = next(line for line in lock.read_text().splitlines() if line.startswith("torch=="))
        major, minor = (int(x) for x in torch.split("==")[1].split(".")[:2])
        assert (major, minor) < (2, 11), (lock.name, torch)  # Debian's drivers run CUDA 12, not 13


def test_a_pi_keeps_its_numpy_and_gets_only_the_edge_wheels():
    text = (LOCKS / "cp311-aarch64-glibc2.36-numpy1.24.2.txt").read_text()
    got = select(text, "edge", {"numpy": "1.24.2"})
    download = _names(got["download"])
    assert {"ai-edge-litert", "aiohttp", "python-rtmidi", "opencv-python-headless"} <= download
    assert "numpy" not in download and "torch" not in download and "onnx" not in download
    assert "numpy==1.24.2" in got["constraints"] and got["kept"] == ["numpy"]
    assert not [c for c in got["constraints"] if c.startswith("numpy==") and c != "numpy==1.24.2"]


def test_a_gpu_backend_gets_torch_and_its_cuda_libraries():
    text = (LOCKS / "cp311-x86_64-glibc2.36.txt").read_text()
    got = select(text, "backend,gpu-torch", {})
    download = _names(got["download"])
    assert {"torch", "onnx", "nvidia-ml-py", "triton", "nvidia-cudnn-cu12", "ai-edge-litert"} <= download
    assert "aiohttp" not in download  # the edge's monitor page only
    cpu_only = _names(select(text, "backend", {})["download"])
    assert "torch" not in cpu_only and not [n for n in cpu_only if n.startswith("nvidia-")]


def test_a_host_with_its_own_torch_gets_none_of_torchs_libraries():
    text = (LOCKS / "cp312-x86_64-glibc2.39.txt").read_text()
    got = select(text, "backend,gpu-torch", {"torch": "2.11.0+cu130"})
    download = _names(got["download"])
    assert "onnx" in download and "nvidia-ml-py" in download
    assert not download & {"torch", "triton", "sympy", "networkx"}
    assert not [n for n in download if n.startswith("nvidia-cu")]
    assert "torch==2.11.0+cu130" in got["constraints"]
    # what also something else needs stays pinned (typing-extensions: onnx too)
    assert "typing-extensions" in _names(got["constraints"])


def test_a_lock_line_it_cannot_read_is_named():
    with pytest.raises(ValueError, match="lock_wheelhouse"):
        select("torch>=2\n", "backend", {})
