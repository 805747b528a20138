import itertools
import os

import cv2
import numpy as np
import pytest

from edge_app.cameras import open_source
from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.keypoints import KEYPOINT_INDEX
from lalelu.protocol import PixelFormat


def test_still_source_moves_the_photo_on_its_known_trajectory(litert_engine):
    from lalelu.inference import PoseEstimator

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
        return np.full((h, w, 3), 128, np.uint8)

    def get_metadata(self):
        return {"SensorTimestamp": time.monotonic_ns()}

    def release(self):
        pass


class Picamera2:
    def __init__(self):
        self.frames = 0

    def create_video_configuration(self, **kwargs):
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

    from conftest import lalelu_cmd

    (tmp_path / "picamera2.py").write_text(FAKE_PICAMERA2)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run(
        lalelu_cmd("edge", "--backend", "", "--no-fifo", "--source", "picamera2", "--fps", "100"),
        capture_output=True,
        timeout=60,
        env=env,
    )
    err = r.stderr.decode()
    assert r.returncode == 2, err  # non-zero: systemd's Restart= starts the service again
    assert "the Pi camera delivered no frame for 1 s" in err and "systemd restarts" in err
    assert "Traceback" not in err
