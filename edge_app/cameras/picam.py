"""The Raspberry Pi camera through picamera2: the ISP-scaled lores stream at a fixed frame duration.

Pi 4's ISP gives lores only as YUV420; Pi 5 can give RGB. picamera2 names formats by the
little-endian word, so "BGR888" is R, G, B bytes in memory: what the model wants.
Not exercised on hardware in CI (no camera there).
"""

from __future__ import annotations

import logging

import numpy as np

from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.protocol import PixelFormat

log = logging.getLogger("lalelu.camera")
FORMATS = {"yuv420": ("YUV420", PixelFormat.YUV420), "rgb888": ("BGR888", PixelFormat.RGB888)}


class Picamera2Source:
    def __init__(self, cfg: CameraConfig) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed: on the Pi, apt install python3-picamera2 and create the venv with "
                "--system-site-packages (the Ansible role does both)"
            ) from exc
        fmt_name, self.pixel_format = FORMATS[cfg.pixel_format]
        frame_us = round(1e6 / cfg.fps)
        try:
            self._cam = Picamera2()
            config = self._cam.create_video_configuration(
                main={"size": (cfg.width * 2, cfg.height * 2), "format": "YUV420"},
                lores={"size": (cfg.width, cfg.height), "format": fmt_name},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
                buffer_count=4,
                queue=False,  # never hand out a frame older than the one the sensor is on
            )
            self._cam.configure(config)
            self._cam.start()
        except (IndexError, RuntimeError) as exc:
            raise CameraError(
                f"no usable Pi camera ({exc}); check the ribbon cable and `rpicam-hello --list-cameras`"
            ) from exc
        self.width, self.height, self.fps = cfg.width, cfg.height, cfg.fps
        shape = (
            (cfg.height * 3 // 2, cfg.width)
            if self.pixel_format == PixelFormat.YUV420
            else (cfg.height, cfg.width, 3)
        )
        self._buf = np.empty(shape, np.uint8)
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
            raise CameraError(
                f"the Pi camera delivered no frame for {self._timeout_s:g} s (cable, sensor or power); "
                "exiting so systemd restarts the service"
            ) from exc
        except Exception as exc:  # libcamera raises plain RuntimeError/OSError kinds on a lost sensor
            raise CameraError(
                f"the Pi camera stopped delivering frames ({exc}); exiting so systemd restarts"
            ) from exc
        try:
            arr = request.make_array("lores")
            ts = int(request.get_metadata()["SensorTimestamp"])
            # The lores array may carry row padding (stride > width); copy the visible part.
            np.copyto(self._buf, arr[: self._buf.shape[0], : self._buf.shape[1]].reshape(self._buf.shape))
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
