"""A USB webcam through OpenCV's V4L2 backend.

The frame's time is the driver's buffer timestamp (CAP_PROP_POS_MSEC: CLOCK_MONOTONIC, taken when the
frame was captured), not the moment read() returned; a gap of more than 1.5 periods between timestamps
counts the frames the camera dropped. MJPG by default: USB webcams give more than 30 fps only with it.
"""

from __future__ import annotations

import cv2
import numpy as np

from lalelu.clock import now_ns
from lalelu.closing import Closing
from lalelu.config import CameraConfig
from lalelu.errors import CameraFailed
from lalelu.frames import PixelFormat


class V4L2Source(Closing):
    def __init__(self, cfg: CameraConfig) -> None:
        self._cap = cv2.VideoCapture(cfg.device, cv2.CAP_V4L2)
        if not self._cap.isOpened():
            raise CameraFailed(
                f"no V4L2 camera at /dev/video{cfg.device}: plug it in or set [camera] device (v4l2-ctl --list-devices)"
            )
        # the format first: the sizes and rates a webcam offers depend on it
        self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*cfg.v4l2_fourcc))
        self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or cfg.fps
        self.pixel_format = PixelFormat.RGB888
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._period_ns = 1e9 / self.fps
        self._last_ns = 0
        self.dropped = 0
        self._seq = -1

    def read(self) -> tuple[np.ndarray, int, int] | None:
        ok, img = self._cap.read()
        if not ok:
            raise CameraFailed(
                "the V4L2 camera stopped delivering frames (unplugged?); exiting so systemd restarts"
            )
        ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        t = int(ms * 1e6) if ms > 0 else now_ns()  # a driver without timestamps: the best left is now
        if self._last_ns and t - self._last_ns > 1.5 * self._period_ns:
            self.dropped += round((t - self._last_ns) / self._period_ns) - 1
        self._last_ns = t
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=self._rgb)
        self._seq += 1
        return self._rgb, t, self._seq

    def close(self) -> None:
        self._cap.release()
