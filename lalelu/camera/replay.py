"""Replay a recorded clip (any format OpenCV reads) or a folder of images, paced or as fast as possible."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lalelu.camera.pacing import Pacer
from lalelu.closing import Closing
from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.frames import PixelFormat

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class ReplaySource(Closing):
    def __init__(self, cfg: CameraConfig) -> None:
        path = Path(cfg.path)
        if not path.exists():
            raise CameraError(
                f"replay source {path} does not exist: set [camera] path to a clip or image folder"
            )
        self._images: list[Path] = []
        self._cap: cv2.VideoCapture | None = None
        fps = cfg.fps
        if path.is_dir():
            self._images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise CameraError(f"replay folder {path} holds no .png/.jpg images")
        else:
            self._cap = cv2.VideoCapture(str(path))
            if not self._cap.isOpened():
                raise CameraError(f"cannot open {path} as a video: is it a clip OpenCV can read?")
            fps = self._cap.get(cv2.CAP_PROP_FPS) or cfg.fps
        self.width, self.height, self.fps = cfg.width, cfg.height, fps
        self.pixel_format = PixelFormat.RGB888
        self._bgr = np.empty((cfg.height, cfg.width, 3), np.uint8)
        self._rgb = np.empty_like(self._bgr)
        self._pacer = Pacer(fps, paced=cfg.paced)
        self._next = 0

    @property
    def dropped(self) -> int:
        return self._pacer.dropped

    def _grab(self) -> np.ndarray | None:
        if self._cap is not None:
            ok, img = self._cap.read()
            return img if ok else None
        if self._next >= len(self._images):
            return None
        path = self._images[self._next]
        self._next += 1
        loaded = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if loaded is None:
            raise CameraError(f"cannot read image {path}: is it a valid PNG/JPEG?")
        return loaded

    def read(self) -> tuple[np.ndarray, int, int] | None:
        img = self._grab()
        if img is None:
            return None
        t = self._pacer.next()
        if img.shape[:2] != (self.height, self.width):
            cv2.resize(img, (self.width, self.height), dst=self._bgr, interpolation=cv2.INTER_AREA)
            img = self._bgr
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=self._rgb)
        return self._rgb, t, self._pacer.index

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
