import itertools
import os

import cv2
import numpy as np
import pytest

from lalelu.camera import open_source
from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.frames import PixelFormat
from lalelu.keypoints import KEYPOINT_INDEX


def test_still_source_moves_the_photo_on_its_known_trajectory(litert_engine):
    from lalelu.engine.estimator import PoseEstimator

    cfg = CameraConfig(width=320, height=240, fps=100, still_period_s=1.0, still_amplitude=0.15)
    src = open_source(cfg)
    est = PoseEstimator(litert_engine)
    out = np.zeros((17, 3), np.float32)
    nose = KEYPOINT_INDEX["nose"]
    errors = []
    for seq in (0, 25, 50, 75):  # offsets 0, +A, 0, -A
        frame = src.render(seq)
        est.estimate(frame, PixelFormat.RGB888, 320, 240, out)
        ex, ey = src.photo_to_frame(227, 122, seq)  # the reference nose in the photo
        errors.append(np.hypot(out[nose, 0] - ex, out[nose, 1] - ey))
    assert src.offset_y(25) - src.offset_y(75) == round(2 * 0.15 * 240)
    assert max(errors) < 10


def test_still_source_yields_timestamps_and_sequence():
    src = open_source(CameraConfig(fps=200, pixel_format="yuv420"))
    got = [src.read() for _ in range(5)]
    assert [g[2] for g in got] == [0, 1, 2, 3, 4]
    stamps = [g[1] for g in got]
    assert all(4_000_000 < b - a < 6_000_000 for a, b in itertools.pairwise(stamps))
    assert got[0][0].shape == (360, 320)


def test_replay_folder_of_images(tmp_path, astronaut):
    for i in range(3):
        cv2.imwrite(
            str(tmp_path / f"{i:03d}.png"), cv2.cvtColor(np.roll(astronaut, i * 10, 0), cv2.COLOR_RGB2BGR)
        )
    src = open_source(CameraConfig(source="replay", path=str(tmp_path), width=256, height=256, paced=False))
    frames = []
    while (got := src.read()) is not None:
        frames.append(got[0].copy())
    assert len(frames) == 3
    assert frames[0].shape == (256, 256, 3)
    assert not np.array_equal(frames[0], frames[1])


def test_replay_of_missing_path_is_clear():
    with pytest.raises(CameraError, match="does not exist"):
        open_source(CameraConfig(source="replay", path="/nonexistent/clip.mp4"))


def test_picamera2_missing_is_clear():
    with pytest.raises(CameraError, match="python3-picamera2"):
        open_source(CameraConfig(source="picamera2"))


@pytest.mark.hardware
def test_picamera2_delivers_frames_at_the_configured_rate():
    pytest.importorskip("picamera2", reason="hardware test: needs a Raspberry Pi with a camera")
    src = open_source(CameraConfig(source="picamera2", fps=100, pixel_format="yuv420"))
    stamps = [src.read()[1] for _ in range(200)]
    src.close()
    period = np.median(np.diff(stamps)) / 1e6
    assert 9.5 < period < 10.5


FAKE_PICAMERA2 = '''
"""A stand-in for picamera2 at the API lalelu uses: 30 frames, then the sensor goes silent."""
import time
import numpy as np


class _Request:
    def __init__(self, cam):
        self.cam = cam

    def make_array(self, name):
        w, h = self.cam.config["lores"]["size"]
        if self.cam.config["lores"]["format"] == "YUV420":
            return padded_i420(self.cam.image, 64)
        return np.full((h, w, 3), 128, np.uint8)

    def get_metadata(self):
        return {"SensorTimestamp": time.monotonic_ns()}

    def release(self):
        pass


def padded_i420(packed, align):
    """What the ISP hands out: each plane's rows padded to a stride aligned to `align` bytes (garbage 255)."""
    h = packed.shape[0] * 2 // 3
    w = packed.shape[1]
    stride = -(-w // align) * align
    out = np.full((h * 3 // 2, stride), 255, np.uint8)
    flat = out.reshape(-1)
    out[:h, :w] = packed[:h]
    chroma = packed.reshape(-1)[h * w :].reshape(2, h // 2, w // 2)
    for plane in range(2):
        start = h * stride + plane * (h // 2) * (stride // 2)
        rows = flat[start : start + (h // 2) * (stride // 2)].reshape(h // 2, stride // 2)
        rows[:, : w // 2] = chroma[plane]
    return out


class Picamera2:
    # as picamera2 lists an IMX708's modes (a Camera Module 3): the 120 fps one is binned and cropped
    sensor_modes = [
        {"size": (1536, 864), "fps": 120.13, "bit_depth": 10},
        {"size": (2304, 1296), "fps": 56.03, "bit_depth": 10},
        {"size": (4608, 2592), "fps": 14.35, "bit_depth": 10},
    ]

    def __init__(self):
        self.frames = 0
        self.image = None  # packed I420 the sensor "sees"; the test sets it

    def create_video_configuration(self, **kwargs):
        assert kwargs["sensor"]["output_size"] in [m["size"] for m in self.sensor_modes]
        return kwargs

    def configure(self, config):
        self.config = config

    def start(self):
        pass

    def capture_request(self, wait=None):
        assert wait is False, "lalelu must ask for a job and wait on it with a timeout"
        return "job"

    def wait(self, job, timeout=None):
        assert timeout is not None and timeout > 0, "an endless wait would hang the edge on a dead sensor"
        self.frames += 1
        if self.frames > 30:
            time.sleep(timeout)
            raise TimeoutError()
        time.sleep(0.01)
        return _Request(self)

    def stop(self):
        pass

    def close(self):
        pass
'''


def test_a_camera_that_goes_silent_ends_the_edge_with_a_clear_error(tmp_path):
    """The boundary to picamera2 (no camera here): the documented capture_request(wait=False) + wait(job,
    timeout) calls, answered by a stand-in whose sensor stops after 30 frames."""
    import subprocess

    from support import lalelu_cmd

    (tmp_path / "picamera2.py").write_text(FAKE_PICAMERA2)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run(
        lalelu_cmd("edge", "--backend", "", "--no-fifo", "--source", "picamera2", "--fps", "100"),
        capture_output=True,
        timeout=60,
        env=env,
    )
    err = r.stderr.decode()
    assert r.returncode == 1, (
        err
    )  # a failed run (not bad input); non-zero: systemd's Restart= starts the service again
    assert "the Pi camera delivered no frame for 1 s" in err and "systemd restarts" in err
    assert "Traceback" not in err


def _fake_picamera2(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "picamera2.py").write_text(FAKE_PICAMERA2)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    return importlib.import_module("picamera2")


@pytest.mark.parametrize("width,height", [(320, 240), (200, 150), (330, 248)])
def test_picamera2_lores_rows_padded_by_stride_arrive_packed(tmp_path, monkeypatch, astronaut, width, height):
    """A width off the ISP's 64-byte alignment pads every row of every plane; the frame must come out as
    packed I420 (a plain slice of the padded array would shift the chroma rows)."""
    import cv2

    fake = _fake_picamera2(tmp_path, monkeypatch)
    packed = cv2.cvtColor(cv2.resize(astronaut, (width, height)), cv2.COLOR_RGB2YUV_I420)
    cam_image = packed.copy()
    original = fake.Picamera2.__init__

    def init(self):
        original(self)
        self.image = cam_image

    monkeypatch.setattr(fake.Picamera2, "__init__", init)
    src = open_source(
        CameraConfig(source="picamera2", width=width, height=height, fps=100, pixel_format="yuv420")
    )
    try:
        frame, _t, _seq = src.read()
    finally:
        src.close()
    np.testing.assert_array_equal(frame, packed)


def test_picamera2_sensor_mode_is_the_largest_fast_enough():
    from lalelu.camera.picam import choose_sensor_mode

    modes = [
        {"size": (1536, 864), "fps": 120.13, "bit_depth": 10},
        {"size": (2304, 1296), "fps": 56.03, "bit_depth": 10},
        {"size": (4608, 2592), "fps": 14.35, "bit_depth": 10},
    ]
    assert choose_sensor_mode(modes, 100)["size"] == (1536, 864)
    assert choose_sensor_mode(modes, 50)["size"] == (2304, 1296)
    with pytest.raises(CameraError, match="at most 120 fps"):
        choose_sensor_mode(modes, 200)


class FakeCapture:
    """Stands in for cv2.VideoCapture on V4L2: records what is set, hands out frames with the driver's
    buffer timestamps (CAP_PROP_POS_MSEC), frames 3 and 4 of every 10 dropped by the camera."""

    def __init__(self, device, api):
        import cv2

        self.cv2 = cv2
        self.sets: list[tuple[int, float]] = []
        self.n = 0
        self.t_ms = 5000.0

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.sets.append((prop, value))
        return True

    def get(self, prop):
        cv2 = self.cv2
        values = {cv2.CAP_PROP_FRAME_WIDTH: 320, cv2.CAP_PROP_FRAME_HEIGHT: 240, cv2.CAP_PROP_FPS: 100.0}
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self.t_ms
        return values.get(prop, 0)

    def read(self):
        self.n += 1
        self.t_ms += 10.0 if self.n % 10 != 5 else 30.0  # two frames lost before every 5th of ten
        return True, np.zeros((240, 320, 3), np.uint8)

    def release(self):
        pass


def test_v4l2_uses_the_drivers_timestamps_asks_for_mjpg_and_counts_drops(monkeypatch):
    import cv2

    import lalelu.camera.v4l2 as v4l2

    monkeypatch.setattr(v4l2.cv2, "VideoCapture", FakeCapture)
    src = v4l2.V4L2Source(CameraConfig(source="v4l2", width=320, height=240, fps=100))
    stamps = [src.read()[1] for _ in range(20)]
    assert stamps[0] == 5010 * 1_000_000  # the driver's time of the frame, not the time read() returned
    assert src.dropped == 4  # two gaps of two frames
    props = [p for p, _ in src._cap.sets]
    assert props[0] == cv2.CAP_PROP_FOURCC and props.index(cv2.CAP_PROP_FOURCC) < props.index(
        cv2.CAP_PROP_FRAME_WIDTH
    )
    assert src._cap.sets[0][1] == cv2.VideoWriter.fourcc(*"MJPG")


def test_sources_engines_and_outputs_close_at_the_end_of_a_with_block():
    """One resource shape (lalelu.closing.Closing): `with` closes a camera, an engine, an output, even when
    the block fails; every plug-in of the three families has it."""
    import importlib
    import inspect

    from lalelu.closing import Closing

    modules = [
        "lalelu.camera.still",
        "lalelu.camera.replay",
        "lalelu.camera.v4l2",
        "lalelu.camera.picam",
        "lalelu.engine.litert",
        "lalelu.engine.tensorrt",
        "lalelu.engine.tf_savedmodel",
        "lalelu.engine.torch_cuda",
        "lalelu.output.log",
        "lalelu.output.midi",
        "lalelu.output.osc",
        "lalelu.output.synth",
        "lalelu.output.jack_midi",
    ]
    plugins = []
    for name in modules:
        module = importlib.import_module(name)
        plugins += [
            c
            for c in vars(module).values()
            if inspect.isclass(c)
            and c.__module__ == name
            and c.__name__.endswith(("Source", "Engine", "Output"))
        ]
    assert len(plugins) == len(modules), plugins
    assert all(issubclass(c, Closing) for c in plugins), [c for c in plugins if not issubclass(c, Closing)]

    from lalelu.camera import open_source
    from lalelu.config import CameraConfig

    closed = []
    with pytest.raises(RuntimeError, match="mid-block"), open_source(CameraConfig()) as source:
        source.close = lambda: closed.append(True)  # type: ignore[method-assign]
        assert source.read() is not None
        raise RuntimeError("mid-block")
    assert closed == [True]
