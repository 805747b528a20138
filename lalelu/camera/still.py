"""A real photo moved along a known trajectory: the built-in input of the demo and the tests.

The photo (the bundled astronaut from scikit-image, or any image given as [camera] path) is scaled to fit
the frame, centred, and moved vertically along `[camera] still_motion` (motion.py) at t = seq / fps, so every
frame's true position, and every stroke's impact, is known. The nod ("sine") moves by whole pixels, as it
always has; strokes and CSV paths are drawn at their sub-pixel offset (bilinear), as a sensor would see a
hand between two pixel rows.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lalelu.camera.motion import SineMotion, motion_from_config
from lalelu.camera.pacing import Pacer
from lalelu.closing import Closing
from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.frames import FrameFormat, PixelFormat

BACKGROUND = 90
BUNDLED_PHOTO = Path(__file__).resolve().parent.parent.parent / "lalelu" / "data" / "astronaut.png"


def load_photo(path: str = "") -> np.ndarray:
    """RGB uint8 photo: the given file, else the bundled astronaut photo."""
    source = path or str(BUNDLED_PHOTO)
    img = cv2.imread(source, cv2.IMREAD_COLOR)
    if img is None:
        raise CameraError(f"cannot read image {source}: check the path and that it is a PNG or JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class StillSource(Closing):
    def __init__(self, cfg: CameraConfig, photo: np.ndarray | None = None) -> None:
        self.width, self.height, self.fps = cfg.width, cfg.height, cfg.fps
        self.pixel_format = PixelFormat.named(cfg.pixel_format)
        photo = load_photo(cfg.path) if photo is None else photo
        scale = min(cfg.width / photo.shape[1], cfg.height / photo.shape[0])
        self.photo = cv2.resize(
            photo,
            (round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
            interpolation=cv2.INTER_AREA,
        )
        self.photo_scale = scale
        self.photo_x = (cfg.width - self.photo.shape[1]) // 2
        self.motion = motion_from_config(cfg)
        self.whole_pixels = isinstance(self.motion, SineMotion)
        self._shift = np.array([[1.0, 0.0, float(self.photo_x)], [0.0, 1.0, 0.0]])
        self._rgb = np.full(
            FrameFormat(PixelFormat.RGB888, cfg.width, cfg.height).shape, BACKGROUND, np.uint8
        )
        self._yuv = np.empty(FrameFormat(PixelFormat.YUV420, cfg.width, cfg.height).shape, np.uint8)
        self._pacer = Pacer(cfg.fps, paced=True)
        self.seq = -1

    @property
    def dropped(self) -> int:
        return self._pacer.dropped

    def offset_y(self, seq: int) -> float:
        """Vertical photo offset in frame pixels of frame `seq` (positive = down): whole for the nod."""
        base = (self.height - self.photo.shape[0]) // 2
        offset = self.motion.offset(seq / self.fps) * self.height
        return base + (round(offset) if self.whole_pixels else offset)

    def photo_to_frame(self, x: float, y: float, seq: int) -> tuple[float, float]:
        """Where a point of the original photo appears in frame `seq`."""
        return x * self.photo_scale + self.photo_x, y * self.photo_scale + self.offset_y(seq)

    def render(self, seq: int) -> np.ndarray:
        frame = self._rgb
        if not self.whole_pixels:
            self._shift[1, 2] = self.offset_y(seq)
            cv2.warpAffine(
                self.photo,
                self._shift,
                (self.width, self.height),
                dst=frame,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(BACKGROUND, BACKGROUND, BACKGROUND),
            )
            return self._to_format(frame)
        frame[:] = BACKGROUND
        oy = int(self.offset_y(seq))
        h = self.photo.shape[0]
        top, bottom = max(0, oy), min(self.height, oy + h)
        if bottom > top:
            frame[top:bottom, self.photo_x : self.photo_x + self.photo.shape[1]] = self.photo[
                top - oy : bottom - oy
            ]
        return self._to_format(frame)

    def _to_format(self, frame: np.ndarray) -> np.ndarray:
        if self.pixel_format == PixelFormat.YUV420:
            cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420, dst=self._yuv)
            return self._yuv
        return frame

    def read(self) -> tuple[np.ndarray, int, int] | None:
        t = self._pacer.next()
        self.seq = self._pacer.index
        return self.render(self.seq), t, self.seq

    def close(self) -> None:
        pass
