"""[engine] kind = "auto": the GPU engine where torch sees a CUDA GPU and an ONNX model is there, LiteRT on
the CPU elsewhere, and one line saying which and why; `lalelu check` names the engine and its device."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lalelu.cli.check import WARN, unused_gpu_check
from lalelu.config import EngineConfig, config_from_dict
from lalelu.engine import engine_from_config, resolve_auto

H200 = ("NVIDIA H200", "")
NO_TORCH = ("", "torch is not installed (the gpu-torch extra)")


def test_a_gpu_and_an_onnx_model_give_the_gpu_engine(tmp_path):
    onnx = tmp_path / "lightning.onnx"
    onnx.write_bytes(b"onnx")
    cfg, why = resolve_auto(EngineConfig(kind="auto", model=str(onnx), compile=True), H200)
    assert (cfg.kind, cfg.model, cfg.compile) == ("torch-cuda", str(onnx), True)
    assert why == "engine auto: torch-cuda on NVIDIA H200 (lightning.onnx)"


def test_without_a_gpu_the_cpu_engine_and_why(tmp_path):
    onnx = tmp_path / "lightning.onnx"
    onnx.write_bytes(b"onnx")
    cfg, why = resolve_auto(EngineConfig(kind="auto", model=str(onnx)), NO_TORCH)
    assert (cfg.kind, cfg.model) == ("litert", "")  # LiteRT cannot read ONNX: the bundled model
    assert (
        why
        == "engine auto: litert on the CPU (the bundled model): torch is not installed (the gpu-torch extra)"
    )
    tflite = tmp_path / "thunder.tflite"
    cfg, why = resolve_auto(EngineConfig(kind="auto", model=str(tflite)), NO_TORCH)
    assert (cfg.kind, cfg.model) == ("litert", str(tflite)) and "(thunder.tflite)" in why


def test_a_gpu_without_its_onnx_model_says_how_to_make_one(tmp_path):
    cfg, why = resolve_auto(EngineConfig(kind="auto", model=str(tmp_path / "missing.onnx")), H200)
    assert cfg.kind == "litert"
    assert "NVIDIA H200 found, but [engine] model is not an ONNX file that exists" in why
    assert "lalelu convert MODEL.tflite --to onnx" in why


def test_other_kinds_are_left_as_configured():
    cfg = EngineConfig(kind="litert", threads=1)
    assert resolve_auto(cfg, H200) == (cfg, "engine litert (as configured)")


def test_auto_is_a_kind_the_configuration_accepts():
    assert config_from_dict({"engine": {"kind": "auto"}}, "test").engine.kind == "auto"


def test_auto_loads_the_cpu_engine_on_this_machine_and_says_why(caplog):
    """CI has no GPU (its torch is the CPU build): auto must still play, on LiteRT, with one warning."""
    with caplog.at_level(logging.INFO, logger="lalelu.engine"):
        engine = engine_from_config(EngineConfig(kind="auto", warmup=1))
    try:
        assert engine.name == "litert"
    finally:
        engine.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "lalelu.engine"]
    assert len(lines) == 1 and lines[0].startswith("engine auto: litert on the CPU (the bundled model): "), (
        lines
    )


@pytest.mark.parametrize("present", [True, False])
def test_check_warns_when_a_gpu_sits_unused(tmp_path: Path, present: bool):
    device = tmp_path / "nvidia0"
    if present:
        device.write_text("")
    found = unused_gpu_check("litert", str(device))
    if present:
        assert found is not None and found.verdict == WARN and 'kind = "auto"' in found.detail
    else:
        assert found is None
    assert unused_gpu_check("torch-cuda", str(device)) is None
