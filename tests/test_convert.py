"""`lalelu convert`: ONNX export checked against the source model; manifests; clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import REFERENCE

tf = pytest.importorskip("tensorflow", reason="needs tensorflow-cpu (installed by .ci/run)")
pytest.importorskip("tf2onnx", reason="needs tf2onnx (installed by .ci/run)")

from lalelu.cli.convert import run_convert  # noqa: E402
from lalelu.engine import BUNDLED_MODEL  # noqa: E402
from lalelu.engine.manifests import check_manifest, write_manifest  # noqa: E402
from lalelu.errors import LaleluError, ModelError  # noqa: E402


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from test_savedmodel import ThunderShaped

    path = tmp_path_factory.mktemp("sm") / "thunder_like"
    m = ThunderShaped()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


def test_savedmodel_to_onnx_matches_tensorflow(saved_model, tmp_path):
    result = run_convert(saved_model, "onnx", tmp_path / "m.onnx", False, 17, log=lambda m: None)
    assert result["max_abs_diff"] < 1e-5
    manifest = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert manifest["kind"] == "onnx" and len(manifest["source_sha256"]) == 64


def test_bundled_tflite_to_float_onnx_keeps_the_keypoints(lightning_onnx, astronaut, litert_engine):
    import onnxruntime as ort

    from lalelu.engine.preprocess import Letterbox
    from lalelu.frames import PixelFormat
    from lalelu.keypoints import KEYPOINT_INDEX

    sess = ort.InferenceSession(str(lightning_onnx), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    buf = np.zeros((192, 192, 3), np.uint8)
    lb = Letterbox(512, 512, PixelFormat.RGB888, buf)
    lb(astronaut)
    feed = buf[None].astype(np.float32 if "float" in inp.type else np.uint8)
    raw = np.asarray(sess.run(None, {inp.name: feed})[0]).reshape(17, 3)
    kp = np.zeros((17, 3), np.float32)
    lb.to_frame(raw, kp)
    for name, (rx, ry) in REFERENCE.items():
        x, y, _ = kp[KEYPOINT_INDEX[name]]
        assert np.hypot(x - rx, y - ry) <= 15, name


def test_engine_built_for_another_gpu_is_refused(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized")
    write_manifest(engine, BUNDLED_MODEL, "tensorrt", "fp16", gpu="NVIDIA GeForce GTX 1660")
    check_manifest(engine, "NVIDIA GeForce GTX 1660", "")
    with pytest.raises(
        ModelError, match=r"built on 'NVIDIA GeForce GTX 1660', this GPU is 'NVIDIA H100.*reconvert"
    ):
        check_manifest(engine, "NVIDIA H100 80GB HBM3", "")
    other = tmp_path / "other.tflite"
    other.write_bytes(b"another model")
    with pytest.raises(ModelError, match="built from another model"):
        check_manifest(engine, "NVIDIA GeForce GTX 1660", "", source=other)
    (tmp_path / "m.engine.manifest.json").unlink()
    with pytest.raises(ModelError, match="no readable manifest"):
        check_manifest(engine, "x", "")


def test_tftrt_on_a_new_tensorflow_says_what_to_do(saved_model, tmp_path):
    major, minor = (int(p) for p in tf.__version__.split(".")[:2])
    if (major, minor) <= (2, 17):
        pytest.skip(f"TensorFlow {tf.__version__} still has TF-TRT; this checks the message of newer ones")
    with pytest.raises(LaleluError, match=r"removed in 2\.18"):
        run_convert(saved_model, "tf-trt", tmp_path / "x", False, 17, log=lambda m: None)


def test_tensorrt_build_without_tensorrt_is_clear(saved_model, tmp_path):
    with pytest.raises(LaleluError, match="needs the `tensorrt` package and an NVIDIA GPU"):
        run_convert(saved_model, "tensorrt", None, True, 17, log=lambda m: None)


def test_without_tf2onnx_the_fix_is_named_not_a_traceback(tmp_path, monkeypatch):
    import importlib.util

    import lalelu.cli.convert as convert

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    with pytest.raises(LaleluError, match=r"tf2onnx and onnxruntime \(the convert extra\): pip install"):
        convert.to_onnx(BUNDLED_MODEL, tmp_path / "m.onnx")


def test_a_conversion_that_moves_the_keypoints_is_not_kept(saved_model, tmp_path, monkeypatch):
    import lalelu.cli.convert as convert

    monkeypatch.setattr(convert, "verify_onnx_on_photo", lambda source, onnx: 0.5)  # a broken conversion
    with pytest.raises(LaleluError, match="not kept"):
        run_convert(saved_model, "onnx", tmp_path / "m.onnx", False, 17, log=lambda m: None)
    # nothing a later run (site.yml's `creates:`) would take for a good model
    assert list(tmp_path.iterdir()) == []
