"""Pose engines behind one small interface; `create_engine` picks one by name."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from lalelu.closing import Closing
from lalelu.config import ENGINE_KINDS, EngineConfig
from lalelu.errors import ModelError
from lalelu.keypoints import NUM_KEYPOINTS

ENGINE_NAMES = ENGINE_KINDS
log = logging.getLogger("lalelu.engine")
GPU_ENGINES = ("tf-savedmodel", "tensorrt", "torch-cuda")  # their telemetry samples the GPU's clock
BUNDLED_MODEL = (
    Path(__file__).resolve().parent.parent / "models" / "movenet_singlepose_lightning_int8_4.tflite"
)


class PoseEngine(Protocol):
    """Load at construction; `infer` reads `input` and writes (17, 3) rows (y, x, score), normalized."""

    name: str
    input: np.ndarray  # preallocated (H, W, 3) buffer in the model's own dtype, filled by the preprocessor

    def warm_up(self, n: int = 10) -> None: ...

    def infer(self, out: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def check_model_path(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(
            f"model file {path} does not exist: set [engine] model in the configuration or pass --model "
            f"with the path of a {what} (the bundled default is {BUNDLED_MODEL})"
        )
    return path


def create_engine(
    name: str,
    model: Path | None = None,
    threads: int = 2,
    delegate: str = "",
    precision: str = "fp32",
    cuda_graph: bool = True,
    compile: bool = False,
) -> PoseEngine:
    if name == "litert":
        from lalelu.engine.litert import LiteRTEngine

        return LiteRTEngine(model or BUNDLED_MODEL, threads=threads, delegate=delegate)
    if name == "tf-savedmodel":
        from lalelu.engine.tf_savedmodel import SavedModelEngine

        if model is None:
            raise ModelError(
                "engine tf-savedmodel needs --model DIR (a TF2 SavedModel such as MoveNet Thunder)"
            )
        return SavedModelEngine(model)
    if name == "tensorrt":
        from lalelu.engine.tensorrt import TensorRTEngine

        if model is None:
            raise ModelError("engine tensorrt needs --model FILE.engine (built by `lalelu convert`)")
        return TensorRTEngine(model)
    if name == "torch-cuda":
        from lalelu.engine.torch_cuda import TorchCudaEngine

        if model is None:
            raise ModelError(
                "engine torch-cuda needs --model FILE.onnx (make one: lalelu convert MODEL.tflite --to onnx)"
            )
        return TorchCudaEngine(model, precision, "graph" if cuda_graph else "eager", compile=compile)
    raise ModelError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")


def cuda_gpu() -> tuple[str, str]:
    """(the name of GPU 0, "") where torch sees a CUDA GPU; ("", why not) elsewhere."""
    try:
        import torch
    except ImportError:
        return "", "torch is not installed (the gpu-torch extra)"
    if not torch.cuda.is_available():
        return "", f"torch {torch.__version__} sees no CUDA GPU (no NVIDIA driver or device, or a CPU build)"
    return torch.cuda.get_device_name(0), ""


def resolve_auto(cfg: EngineConfig, gpu: tuple[str, str] | None = None) -> tuple[EngineConfig, str]:
    """[engine] kind = "auto" made concrete: torch-cuda with its ONNX model where torch sees a CUDA GPU,
    LiteRT on the CPU elsewhere (with the model where it is a .tflite, else the bundled one); and the line
    saying which and why. `gpu`: cuda_gpu()'s answer (asked here when not given)."""
    if cfg.kind != "auto":
        return cfg, f"engine {cfg.kind} (as configured)"
    name, why_not = gpu if gpu is not None else cuda_gpu()
    model = Path(cfg.model) if cfg.model else None
    if name and model is not None and model.suffix == ".onnx" and model.exists():
        return dataclasses.replace(
            cfg, kind="torch-cuda"
        ), f"engine auto: torch-cuda on {name} ({model.name})"
    if name:
        why_not = (
            f"{name} found, but [engine] model is not an ONNX file that exists ({cfg.model or 'unset'}); "
            "make one with: lalelu convert MODEL.tflite --to onnx"
        )
    cpu_model = cfg.model if model is not None and model.suffix == ".tflite" else ""
    fallback = dataclasses.replace(cfg, kind="litert", model=cpu_model)
    return (
        fallback,
        f"engine auto: litert on the CPU ({Path(cpu_model).name if cpu_model else 'the bundled model'}): {why_not}",
    )


def engine_from_config(cfg: EngineConfig, warm: bool = True) -> PoseEngine:
    """The engine a host's [engine] section names, loaded and (unless told not to) warmed up; for
    kind = "auto" the one resolve_auto chooses, said in one log line."""
    if cfg.kind == "auto":
        cfg, why = resolve_auto(cfg)
        (log.info if cfg.kind == "torch-cuda" else log.warning)("%s", why)
    engine = create_engine(
        cfg.kind,
        Path(cfg.model) if cfg.model else None,
        cfg.threads,
        cfg.delegate,
        cfg.precision,
        cfg.cuda_graph,
        cfg.compile,
    )
    if warm:
        engine.warm_up(cfg.warmup)
    return engine


class WarmUpByInfer(Closing):
    """Engines warm up by running `n` inferences on whatever their input buffer holds."""

    def warm_up(self, n: int = 10) -> None:
        out = np.empty((NUM_KEYPOINTS, 3), np.float32)
        for _ in range(n):
            self.infer(out)  # type: ignore[attr-defined]


def check_output_shape(shape: tuple[int, ...], path: Path) -> None:
    if tuple(shape)[-2:] != (NUM_KEYPOINTS, 3):
        raise ModelError(
            f"{path} outputs shape {tuple(shape)}, not [1, 1, 17, 3]: this is not a MoveNet single-pose model"
        )
