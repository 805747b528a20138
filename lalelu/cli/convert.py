"""`lalelu convert`: MoveNet to ONNX (checked against the source), to a TensorRT engine, or to TF-TRT.

Every artifact gets a manifest `<artifact>.manifest.json`: source hash, precision, library versions and
GPU; the TensorRT engine refuses to load when the manifest does not match the GPU it runs on.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lalelu.engine.manifests import cuda_gpu_name, write_manifest
from lalelu.errors import LaleluError

CONVERT_EXTRA = (
    "conversion needs tf2onnx and onnxruntime (the convert extra): pip install 'lalelu-drums[convert]', "
    "on the controller or any machine with this checkout: pip install -e '.[convert]'"
)


# Largest difference accepted between the ONNX model's keypoints and the source's on the bundled photo of a
# person, for the keypoints both are sure of (score >= 0.3), in input fractions: two of Lightning's 1/48
# heatmap cells. The int8 model run in float moved one by 0.015 (tf2onnx 1.17, 2026-12-06); a broken
# conversion moves them far more or loses the person. (On random inputs the heatmaps are flat and the two
# may pick cells far apart, 0.35 here: that difference is only reported.)
MAX_ONNX_DIFF = 2 / 48


def to_onnx(source: Path, out: Path, opset: int = 17, log=print) -> Path:
    """A TF2 SavedModel directory or a .tflite file (dequantized to float) -> ONNX, through tf2onnx."""
    if not source.exists():
        raise LaleluError(f"{source} does not exist: give a SavedModel directory or a .tflite file")
    kind = (
        ["--tflite", str(source), "--dequantize"]
        if source.suffix == ".tflite"
        else ["--saved-model", str(source)]
    )
    if importlib.util.find_spec("tf2onnx") is None:  # before a child's raw ModuleNotFoundError can say it
        raise LaleluError(CONVERT_EXTRA)
    cmd = [sys.executable, "-m", "tf2onnx.convert", *kind, "--output", str(out), "--opset", str(opset)]
    log(f"converting {source} to ONNX (opset {opset}) with tf2onnx ...")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        if "No module named 'tf2onnx" in r.stderr or "No module named tf2onnx" in r.stderr:
            raise LaleluError(CONVERT_EXTRA)
        raise LaleluError(f"tf2onnx failed on {source}:\n{r.stderr[-3000:]}")
    return out


def _onnx_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise LaleluError(
            "checking the ONNX model needs onnxruntime: pip install 'lalelu-drums[convert]'"
        ) from exc
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _source_engine(source: Path):
    """The model being converted, as the app runs it (.tflite: LiteRT; a directory: TF SavedModel)."""
    from lalelu.engine import create_engine

    return create_engine("litert" if source.suffix == ".tflite" else "tf-savedmodel", source, threads=2)


def _onnx_keypoints(sess, x: np.ndarray) -> np.ndarray:
    """The ONNX model's (17, 3) output for one input image `x` (fed as float where it takes float)."""
    inp = sess.get_inputs()[0]
    feed = x[None].astype(np.float32 if "float" in inp.type else x.dtype)
    return np.asarray(sess.run(None, {inp.name: feed})[0]).reshape(17, 3)


def verify_onnx_on_photo(source: Path, onnx_path: Path) -> float:
    """Largest difference of the confident keypoints' positions (y, x; input fractions) between the ONNX
    model and the source model, on the bundled photo of a person, letterboxed as the app does."""
    from lalelu.camera.still import load_photo
    from lalelu.engine.preprocess import Letterbox
    from lalelu.frames import PixelFormat

    photo = load_photo()
    engine = _source_engine(source)
    Letterbox(photo.shape[1], photo.shape[0], PixelFormat.RGB888, engine.input)(photo)
    ref = np.zeros((17, 3), np.float32)
    engine.infer(ref)
    got = _onnx_keypoints(_onnx_session(onnx_path), engine.input)
    engine.close()
    sure = (ref[:, 2] >= 0.3) & (got[:, 2] >= 0.3)
    if not sure.any():
        return float("inf")  # the source finds a person there: the conversion lost it
    return float(np.abs(got[sure, :2] - ref[sure, :2]).max())


def verify_onnx(source: Path, onnx_path: Path, n: int = 5, seed: int = 0) -> float:
    """Largest absolute difference of the ONNX model's output from the source model's, on random inputs."""
    engine = _source_engine(source)
    sess = _onnx_session(onnx_path)
    rng = np.random.default_rng(seed)
    worst = 0.0
    ref = np.zeros((17, 3), np.float32)
    for _ in range(n):
        x = rng.integers(0, 256, engine.input.shape).astype(engine.input.dtype)
        engine.input[:] = x
        engine.infer(ref)
        got = _onnx_keypoints(sess, x)
        worst = max(worst, float(np.abs(got - ref).max()))
    engine.close()
    return worst


def to_tensorrt(onnx_path: Path, out: Path, fp16: bool, timing_cache: Path, log=print) -> Path:
    """ONNX -> serialized TensorRT engine (TensorRT 10 API). Needs `tensorrt` and an NVIDIA GPU."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise LaleluError(
            "building a TensorRT engine needs the `tensorrt` package and an NVIDIA GPU; "
            "run `lalelu convert` on the backend (fab convert)"
        ) from exc
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LaleluError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    log(f"building the TensorRT engine ({'fp16' if fp16 else 'fp32'}); this takes minutes the first time ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LaleluError("TensorRT could not build an engine from this network (see its log above)")
    out.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    from cuda.bindings import runtime as cudart

    write_manifest(out, onnx_path, "tensorrt", "fp16" if fp16 else "fp32", cuda_gpu_name(cudart))
    return out


def to_tftrt(saved_model: Path, out: Path, fp16: bool) -> Path:
    """TF-TRT the reference way; TensorFlow removed TF-TRT from its builds in 2.18."""
    import tensorflow as tf

    major, minor = (int(p) for p in tf.__version__.split(".")[:2])
    if (major, minor) > (2, 17):
        raise LaleluError(
            f"TF-TRT is not in TensorFlow {tf.__version__} (removed in 2.18): use a TensorFlow "
            "<= 2.17 for it, or build a native TensorRT engine: lalelu convert --to tensorrt"
        )
    from tensorflow.python.compiler.tensorrt import trt_convert as tftrt

    converter = tftrt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model),
        precision_mode=tftrt.TrtPrecisionMode.FP16 if fp16 else tftrt.TrtPrecisionMode.FP32,
    )
    converter.convert()
    converter.save(str(out))
    write_manifest(out, saved_model, "tf-trt", "fp16" if fp16 else "fp32")
    return out


def run_convert(source: Path, to: str, out: Path | None, fp16: bool, opset: int, log=print) -> dict:
    start = time.monotonic()
    result: dict = {"source": str(source)}
    if to in ("onnx", "tensorrt"):
        onnx_path = (
            out
            if (to == "onnx" and out)
            else source.with_suffix(".onnx")
            if source.is_file()
            else source.parent / (source.name + ".onnx")
        )
        if source.suffix == ".onnx":  # already ONNX (the provisioned backend's): only the engine is built
            onnx_path = source
            result.update(onnx=str(onnx_path))
        else:
            # written beside, checked, then put in place with its manifest last: an interrupted or failed
            # conversion leaves no file a later run (site.yml's `creates:`) would take for a good one
            part = onnx_path.with_name(onnx_path.name + ".part")
            to_onnx(source, part, opset, log)
            diff = verify_onnx(source, part)
            log(f"ONNX vs source on 5 random inputs: max |diff| {diff:.3g}")
            on_photo = verify_onnx_on_photo(source, part)
            log(f"ONNX vs source on the bundled photo, confident keypoints: max |diff| {on_photo:.3g}")
            if not on_photo <= MAX_ONNX_DIFF:
                part.unlink(missing_ok=True)
                raise LaleluError(
                    f"the ONNX conversion of {source} puts the keypoints of the bundled photo {on_photo:.3g} "
                    f"away from the source's (more than {MAX_ONNX_DIFF}): not kept; check the source model "
                    "and tf2onnx's version"
                )
            part.replace(onnx_path)
            write_manifest(onnx_path, source, "onnx", "fp32")
            result.update(onnx=str(onnx_path), max_abs_diff=diff, max_photo_diff=on_photo)
        if to == "tensorrt":
            engine = out or onnx_path.with_suffix(".fp16.engine" if fp16 else ".fp32.engine")
            to_tensorrt(onnx_path, engine, fp16, onnx_path.with_name("timing.cache"), log)
            result["engine"] = str(engine)
    elif to == "tf-trt":
        dest = out or source.parent / (source.name + "_tftrt")
        result["tftrt"] = str(to_tftrt(source, dest, fp16))
    else:
        raise LaleluError(f"unknown target {to!r}: onnx, tensorrt or tf-trt")
    result["seconds"] = round(time.monotonic() - start, 1)
    log(f"done in {result['seconds']} s")
    return result
