"""Letterbox a camera frame into the model's input buffer and map keypoints back to frame pixels.

Every buffer is allocated once per frame geometry; per frame only cv2 writes into them.
"""

from __future__ import annotations

import cv2
import numpy as np

from lalelu.frames import PixelFormat

# One small resize per frame: OpenCV's worker pool would only contend with the model's threads.
cv2.setNumThreads(1)


class LetterboxGeometry:
    """Where a frame lands in the model's input: scaled by `scale` to new_w x new_h, offset by the pads."""

    def __init__(self, frame_w: int, frame_h: int, in_w: int, in_h: int) -> None:
        self.frame_w, self.frame_h, self.in_w, self.in_h = frame_w, frame_h, in_w, in_h
        self.scale = min(in_w / frame_w, in_h / frame_h)
        self.new_w = max(1, round(frame_w * self.scale))
        self.new_h = max(1, round(frame_h * self.scale))
        self.pad_x = (in_w - self.new_w) // 2
        self.pad_y = (in_h - self.new_h) // 2

    def to_frame(self, model_out: np.ndarray, out: np.ndarray) -> None:
        """Model output rows (y, x, score) normalized to the input -> rows (x, y, score) in frame pixels."""
        out[:, 0] = (model_out[:, 1] * self.in_w - self.pad_x) / self.scale
        out[:, 1] = (model_out[:, 0] * self.in_h - self.pad_y) / self.scale
        out[:, 2] = model_out[:, 2]


class Letterbox(LetterboxGeometry):
    """Resize a frame of fixed geometry into a model input of fixed geometry, keeping the aspect ratio."""

    def __init__(self, frame_w: int, frame_h: int, fmt: PixelFormat, dst: np.ndarray) -> None:
        in_h, in_w = dst.shape[:2]
        super().__init__(frame_w, frame_h, in_w, in_h)
        self.fmt = fmt
        self.dst = dst
        # Resize into a uint8 canvas; a model wanting int32 gets one cast copy of 192x192x3.
        self._canvas = np.zeros((in_h, in_w, 3), np.uint8) if dst.dtype != np.uint8 else dst
        self._canvas[:] = 0
        self._roi = self._canvas[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w]
        self._rgb = np.empty((frame_h, frame_w, 3), np.uint8) if fmt == PixelFormat.YUV420 else None
        self._interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR

    def __call__(self, frame: np.ndarray) -> None:
        src = frame
        if self._rgb is not None:
            cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_I420, dst=self._rgb)
            src = self._rgb
        cv2.resize(src, (self.new_w, self.new_h), dst=self._roi, interpolation=self._interp)
        if self._canvas is not self.dst:
            np.copyto(self.dst, self._canvas, casting="unsafe")
