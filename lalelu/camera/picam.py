"""The Raspberry Pi camera through picamera2: the ISP-scaled lores stream at a fixed frame duration.

Pi 4's ISP gives lores only as YUV420; Pi 5 can give RGB. picamera2 names formats by the
little-endian word, so "BGR888" is R, G, B bytes in memory: what the model wants. A YUV420 lores array
comes as (height * 3 / 2, stride) with the stride aligned by the ISP (e.g. 64 bytes), so a width off that
alignment carries padding in every row of every plane: the planes are copied by stride (`copy_i420`).
The sensor mode is chosen, not left to libcamera: the largest mode that reaches the configured rate.
Not exercised on hardware in CI (no camera there): tests/test_cameras.py runs it against a stand-in.
"""

from __future__ import annotations

import logging

import numpy as np

from lalelu.closing import Closing
from lalelu.config import CameraConfig
from lalelu.errors import CameraError, CameraFailed
from lalelu.frames import FrameFormat, PixelFormat

log = logging.getLogger("lalelu.camera")


def copy_i420(arr: np.ndarray, width: int, height: int, out: np.ndarray) -> None:
    """A (height * 3 / 2, stride) I420 array with row padding -> packed I420 `out` (height * 3 / 2, width).
    The Y plane has `stride` bytes per row, U and V `stride / 2` each, one after the other."""
    stride = arr.shape[1]
    flat = arr.reshape(-1)
    out_flat = out.reshape(-1)
    y_end = height * stride
    out[:height] = arr[:height, :width]
    chroma_rows, chroma_stride, chroma_w = height // 2, stride // 2, width // 2
    for plane in range(2):
        start = y_end + plane * chroma_rows * chroma_stride
        src = flat[start : start + chroma_rows * chroma_stride].reshape(chroma_rows, chroma_stride)
        dst_start = height * width + plane * chroma_rows * chroma_w
        dst = out_flat[dst_start : dst_start + chroma_rows * chroma_w].reshape(chroma_rows, chroma_w)
        dst[:] = src[:, :chroma_w]


def choose_sensor_mode(modes: list[dict], fps: float) -> dict:
    """The largest of the sensor's modes that reaches `fps` (the lores stream is scaled from it)."""
    fast = [m for m in modes if m.get("fps", 0) >= fps]
    if not fast:
        best = max((m.get("fps", 0) for m in modes), default=0)
        raise CameraError(
            f"this camera's sensor reaches at most {best:.0f} fps in any mode; lower [camera] fps to that"
        )
    return max(fast, key=lambda m: m["size"][0] * m["size"][1])


FORMATS = {"yuv420": ("YUV420", PixelFormat.YUV420), "rgb888": ("BGR888", PixelFormat.RGB888)}


class Picamera2Source(Closing):
    def __init__(self, cfg: CameraConfig) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraFailed(
                "picamera2 is not installed: on the Pi, apt install python3-picamera2 and create the venv with "
                "--system-site-packages (the Ansible role does both)"
            ) from exc
        fmt_name, self.pixel_format = FORMATS[cfg.pixel_format]
        frame_us = round(1e6 / cfg.fps)
        try:
            self._cam = Picamera2()
            mode = choose_sensor_mode(self._cam.sensor_modes, cfg.fps)
            log.info(
                "sensor mode %s %s-bit, up to %.0f fps", mode["size"], mode.get("bit_depth"), mode["fps"]
            )
            config = self._cam.create_video_configuration(
                sensor={"output_size": mode["size"], "bit_depth": mode.get("bit_depth", 10)},
                main={"size": (cfg.width * 2, cfg.height * 2), "format": "YUV420"},
                lores={"size": (cfg.width, cfg.height), "format": fmt_name},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                buffer_count=4,
                queue=False,  # never hand out a frame older than the one the sensor is on
            )
            self._cam.configure(config)
            self._cam.start()
        except (IndexError, RuntimeError) as exc:
            raise CameraFailed(
                f"no usable Pi camera ({exc}); check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from exc
        self.width, self.height, self.fps = cfg.width, cfg.height, cfg.fps
        self._buf = np.empty(FrameFormat(self.pixel_format, cfg.width, cfg.height).shape, np.uint8)
        self._last_ts = 0
        self._period_ns = frame_us * 1000
        self._timeout_s = max(1.0, 20 * frame_us / 1e6)
        self.dropped = 0
        self._seq = -1

    def read(self) -> tuple[np.ndarray, int, int] | None:
        try:
            # wait=False gives a job; waiting on it with a timeout turns a silent sensor into an error.
            job = self._cam.capture_request(wait=False)
            request = self._cam.wait(job, timeout=self._timeout_s)
        except TimeoutError as exc:
            raise CameraFailed(
                f"the Pi camera delivered no frame for {self._timeout_s:g} s (cable, sensor or power); "
                "exiting so systemd restarts the service"
            ) from exc
        except Exception as exc:  # libcamera raises plain RuntimeError/OSError kinds on a lost sensor
            raise CameraFailed(
                f"the Pi camera stopped delivering frames ({exc}); exiting so systemd restarts"
            ) from exc
        try:
            arr = request.make_array("lores")
            ts = int(request.get_metadata()["SensorTimestamp"])
            if self.pixel_format == PixelFormat.YUV420:
                copy_i420(arr, self.width, self.height, self._buf)
            else:  # picamera2 returns RGB as (height, width, 3), its padding already cut
                np.copyto(self._buf, arr[:, : self.width])
        finally:
            request.release()
        if self._last_ts and ts - self._last_ts > 1.5 * self._period_ns:
            self.dropped += round((ts - self._last_ts) / self._period_ns) - 1
        self._last_ts = ts
        self._seq += 1
        return self._buf, ts, self._seq

    def close(self) -> None:
        # A camera that has just failed may fail to stop too; that must not hide the first error.
        for step in (self._cam.stop, self._cam.close):
            try:
                step()
            except Exception as exc:  # libcamera's error kinds are not part of its API
                log.warning("closing the Pi camera: %s", exc)
