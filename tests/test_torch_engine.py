"""The torch-cuda engine's parts that run without a GPU: the ONNX network in PyTorch, the MoveNet decode
and the refusals. The GPU run itself is benchmarks/h100/ (not part of CI: CI has no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from support import REFERENCE

torch = pytest.importorskip("torch", reason="needs torch (CPU build, installed by .ci/run)")
pytest.importorskip("onnx", reason="needs onnx (installed by .ci/run)")

from lalelu.cli.pose_image import estimate_pose  # noqa: E402
from lalelu.engine import create_engine  # noqa: E402
from lalelu.engine.torch_cuda import TorchCudaEngine  # noqa: E402
from lalelu.errors import ModelError  # noqa: E402
from lalelu.keypoints import KEYPOINT_INDEX  # noqa: E402


@pytest.fixture(scope="module")
def cpu_engine(lightning_onnx):
    engine = TorchCudaEngine(lightning_onnx, mode="eager", device="cpu")
    yield engine
    engine.close()


def _photos(astronaut: np.ndarray) -> dict[str, np.ndarray]:
    """The real photo, mirrored, and the person off-center in a wider frame."""
    wide = np.zeros((512, 812, 3), np.uint8)
    wide[:, 300:] = astronaut
    return {"astronaut": astronaut, "mirrored": np.ascontiguousarray(astronaut[:, ::-1]), "wide": wide}


def test_without_cuda_the_engine_says_so(lightning_onnx):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    with pytest.raises(ModelError, match=r"CUDA is not available \(torch .*choose engine litert"):
        create_engine("torch-cuda", lightning_onnx)


def test_engine_needs_an_onnx_model(tmp_path):
    with pytest.raises(ModelError, match=r"needs --model FILE\.onnx"):
        create_engine("torch-cuda", None)
    bad = tmp_path / "not.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match=r"is not an ONNX model.*lalelu convert"):
        TorchCudaEngine(bad, mode="eager", device="cpu")


def test_a_graph_without_movenet_heads_is_refused(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 3])
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=1)], "g", [x], [y])
    path = tmp_path / "tiny.onnx"
    save(helper.make_model(graph), str(path))
    with pytest.raises(ModelError, match="does not show MoveNet's center, heatmap, regress, offset head"):
        TorchCudaEngine(path, mode="eager", device="cpu")


def test_unknown_operator_is_named(lightning_onnx):
    from onnx import load

    from lalelu.engine.onnx_torch import OnnxModule

    node = next(n for n in load(str(lightning_onnx)).graph.node if n.op_type == "ArgMax")
    with pytest.raises(ModelError, match="uses ArgMax, which the torch-cuda engine cannot run"):
        OnnxModule([node], {}, "x", [])


def test_network_and_decode_match_the_onnx_model(lightning_onnx, cpu_engine, astronaut):
    """Same float weights: our network + decode against onnxruntime running the whole exported graph
    (network and the decode that tf2onnx carried over from the TFLite file)."""
    import cv2
    import onnxruntime as ort

    sess = ort.InferenceSession(str(lightning_onnx), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ours = np.zeros((17, 3), np.float32)
    for label, photo in _photos(astronaut).items():
        small = cv2.resize(photo, (192, 192), interpolation=cv2.INTER_AREA)
        cpu_engine.input[:] = small
        cpu_engine.infer(ours)
        theirs = np.asarray(sess.run(None, {name: small[None]})[0]).reshape(17, 3)
        seen = theirs[:, 2] > 0.2
        px = np.hypot(*((ours[:, :2] - theirs[:, :2]) * 192).T)
        assert seen.sum() >= 8, label
        assert px[seen].max() < 0.5, (label, px)
        assert np.abs(ours[seen, 2] - theirs[seen, 2]).max() < 0.005, label


def test_keypoints_match_the_tflite_model_on_real_photos(cpu_engine, litert_engine, astronaut):
    """Against the int8 TFLite model itself (integer arithmetic there, float here): a few pixels."""
    for label, photo in _photos(astronaut).items():
        ours = estimate_pose(cpu_engine, photo)
        ref = estimate_pose(litert_engine, photo)
        confident = ref[:, 2] > 0.3
        px = np.hypot(*(ours[:, :2] - ref[:, :2]).T)
        scale = max(photo.shape[:2]) / 192  # model pixels -> photo pixels
        assert confident.sum() >= 6, label
        assert px[confident].max() <= 5 * scale, (label, px[confident] / scale)
    kp = estimate_pose(cpu_engine, astronaut)
    for name, (rx, ry) in REFERENCE.items():
        x, y, score = kp[KEYPOINT_INDEX[name]]
        assert np.hypot(x - rx, y - ry) <= 15 and score > 0.1, name


@pytest.mark.parametrize("fmt_name", ["RGB888", "YUV420"])
def test_raw_frames_letterboxed_in_the_engine_match_the_cpu_path(cpu_engine, astronaut, fmt_name):
    """The GPU path (colour conversion and letterbox as tensor operations, the raw frame from a buffer of
    the engine's) gives the keypoints of the cv2 path, here run on the CPU with the same network."""
    import cv2

    from lalelu.engine.estimator import PoseEstimator
    from lalelu.frames import PixelFormat

    fmt = PixelFormat[fmt_name]

    class CpuLetterboxOnly:  # the same engine seen without infer_frame: cv2 letterbox on the host
        def __init__(self, engine):
            self.engine = engine
            self.input = engine.input
            self.name = engine.name

        def infer(self, out):
            self.engine.infer(out)

    for w, h in ((320, 240), (640, 480), (256, 512)):
        rgb = cv2.resize(astronaut, (w, h), interpolation=cv2.INTER_AREA)
        frame = rgb if fmt == PixelFormat.RGB888 else cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        on_device = PoseEstimator(cpu_engine)
        buffer = on_device.frame_buffer(fmt, w, h)
        buffer[:] = frame
        got = np.zeros((17, 3), np.float32)
        on_device.estimate(buffer, fmt, w, h, got)
        want = np.zeros((17, 3), np.float32)
        PoseEstimator(CpuLetterboxOnly(cpu_engine)).estimate(frame, fmt, w, h, want)  # type: ignore[arg-type]
        assert np.abs(got[:, :2] - want[:, :2]).max() <= 0.05 * max(w, h) / 192, (w, h)
        assert np.abs(got[:, 2] - want[:, 2]).max() <= 0.02, (w, h)
        assert (got[:, 2] > 0.3).sum() >= 6  # a person was found, not two empty results agreeing


@pytest.mark.parametrize("fmt_name", ["RGB888", "YUV420"])
def test_a_batch_of_raw_frames_gives_each_frame_its_own_pose(cpu_engine, astronaut, fmt_name):
    """A band's frames in one call (the batched graph of the backend): each frame's keypoints are the ones
    it gets alone, three different photos in one batch and in two batch sizes."""
    import cv2

    from lalelu.engine.estimator import PoseEstimator
    from lalelu.frames import PixelFormat

    fmt = PixelFormat[fmt_name]
    w, h = 320, 240
    estimator = PoseEstimator(cpu_engine)
    assert estimator.max_batch > 1
    frames = []
    for photo in _photos(astronaut).values():
        rgb = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        buffer = estimator.frame_buffer(fmt, w, h)
        buffer[:] = rgb if fmt == PixelFormat.RGB888 else cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        frames.append(buffer)
    alone = np.zeros((3, 17, 3), np.float32)
    for k, buffer in enumerate(frames):
        estimator.estimate(buffer, fmt, w, h, alone[k])
    for n in (2, 3):
        together = np.full((3, 17, 3), np.nan, np.float32)
        estimator.estimate_batch(frames[:n], fmt, w, h, together)
        np.testing.assert_allclose(together[:n], alone[:n], atol=1e-3)
        assert np.isnan(together[n:]).all()  # rows past the batch untouched
    assert not np.allclose(alone[0], alone[1])  # different photos, different poses: not one pose copied


def test_a_band_served_through_the_real_network_gets_each_edge_its_own_pose(cpu_engine, astronaut):
    """Three edges with three different pictures send at once to a real server on the torch engine (the
    CPU here: its slots finish at launch): each gets back the pose of its own picture, as inferred alone."""
    import socket
    import threading

    import cv2

    from lalelu.backend.server import InferenceServer
    from lalelu.engine.estimator import PoseEstimator
    from lalelu.frames import PixelFormat
    from lalelu.wire.protocol import REPLY_SIZE, encode_frame_header, parse_reply_into

    w, h = 320, 240
    estimator = PoseEstimator(cpu_engine)
    pictures = [cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in _photos(astronaut).values()]
    alone = np.zeros((3, 17, 3), np.float32)
    for k, picture in enumerate(pictures):
        estimator.estimate(np.ascontiguousarray(picture), PixelFormat.RGB888, w, h, alone[k])
    server = InferenceServer(estimator, "127.0.0.1", 0, 1 << 20, max_batch=8)
    assert server.slots == 2
    thread = threading.Thread(target=server.serve, kwargs={"tick_s": 0.1}, daemon=True)
    thread.start()
    got = np.zeros((3, 3, 17, 3), np.float32)
    socks = [
        socket.create_connection(server.address, timeout=30, source_address=(f"127.0.0.{k + 2}", 0))
        for k in range(3)
    ]
    try:
        for rnd in range(3):
            for k, sock in enumerate(socks):  # all three in flight together: the server batches them
                sock.sendall(encode_frame_header(rnd, 1, PixelFormat.RGB888, w, h) + pictures[k].tobytes())
            for k, sock in enumerate(socks):
                data = b""
                while len(data) < REPLY_SIZE:
                    chunk = sock.recv(REPLY_SIZE - len(data))
                    assert chunk, "the server closed the connection"
                    data += chunk
                assert parse_reply_into(data, got[rnd, k]).seq == rnd
    finally:
        for sock in socks:
            sock.close()
        server.stop()
        thread.join(10)
    for rnd in range(3):
        np.testing.assert_allclose(got[rnd], alone, atol=1e-3)
    # every frame served once, however the passes happened to group them (test_a_batch_of_raw_frames... and
    # test_band_serving pin the grouping)
    assert server.counters.frames == 9 == int((server.batch_sizes * np.arange(server.batch_sizes.size)).sum())
