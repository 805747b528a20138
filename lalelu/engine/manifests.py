"""Every converted artifact's manifest `<artifact>.manifest.json`: source hash, precision, library versions
and GPU. Written by `lalelu convert`, checked by the engines that load an artifact (a TensorRT engine only
runs on the GPU and TensorRT it was built for)."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from lalelu.errors import ModelError


def source_hash(path: Path) -> str:
    """sha256 of a model file, or of every file of a SavedModel directory in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def write_manifest(artifact: Path, source: Path, kind: str, precision: str, gpu: str = "") -> Path:
    manifest = {
        "artifact": artifact.name,
        "kind": kind,
        "precision": precision,
        "source": str(source),
        "source_sha256": source_hash(source),
        "gpu": gpu,
        "versions": {
            d: v
            for d in ("tensorflow", "tensorflow-cpu", "tf2onnx", "onnx", "tensorrt")
            if (v := _version(d))
        },
    }
    out = artifact.with_name(artifact.name + ".manifest.json")
    out.write_text(json.dumps(manifest, indent=1))
    return out


def check_manifest(artifact: Path, gpu: str, trt_version: str, source: Path | None = None) -> None:
    """Refuse an engine built for another GPU, TensorRT or model, with the fix in the message."""
    mpath = artifact.with_name(artifact.name + ".manifest.json")
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{artifact} has no readable manifest ({mpath}): rebuild it with `lalelu convert`"
        ) from exc
    problems = []
    if m.get("gpu") and m["gpu"] != gpu:
        problems.append(f"built on {m['gpu']!r}, this GPU is {gpu!r}")
    built_trt = m.get("versions", {}).get("tensorrt", "")
    if built_trt and trt_version and built_trt != trt_version:
        problems.append(f"built with TensorRT {built_trt}, this is {trt_version}")
    if source is not None and source.exists() and m.get("source_sha256") != source_hash(source):
        problems.append(f"built from another model than {source}")
    if problems:
        raise ModelError(
            f"{artifact}: {'; '.join(problems)}: reconvert with `lalelu convert` on this machine"
        )


def cuda_gpu_name(cudart: Any) -> str:
    """GPU 0's name through cuda-python's runtime bindings; '' when CUDA does not answer."""
    err, props = cudart.cudaGetDeviceProperties(0)
    return props.name.decode().strip("\x00") if int(err) == 0 else ""
