"""Camera sources behind one interface: each `read()` gives (frame, capture_ns, seq) or None at the end."""

from __future__ import annotations

from typing import Protocol, Self

import numpy as np

from lalelu.config import CameraConfig
from lalelu.errors import CameraError
from lalelu.frames import PixelFormat


class FrameSource(Protocol):
    width: int
    height: int
    pixel_format: PixelFormat
    fps: float

    @property
    def dropped(self) -> int:
        """Frames the source produced that the loop was too late to take."""

    def read(self) -> tuple[np.ndarray, int, int] | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def open_source(cfg: CameraConfig) -> FrameSource:
    if cfg.source == "still":
        from lalelu.camera.still import StillSource

        return StillSource(cfg)
    if cfg.source == "replay":
        from lalelu.camera.replay import ReplaySource

        return ReplaySource(cfg)
    if cfg.source == "v4l2":
        from lalelu.camera.v4l2 import V4L2Source

        return V4L2Source(cfg)
    if cfg.source == "picamera2":
        from lalelu.camera.picam import Picamera2Source

        return Picamera2Source(cfg)
    raise CameraError(f"unknown camera source {cfg.source!r}")
