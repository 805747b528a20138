"""What a frame is: its pixel format and size. Cameras make frames of a `FrameFormat`, the wire carries
them, the engines read them; each asks it for the array shape and byte count instead of computing them.
A module of its own, below every stage: the wire imports it, not the other way round."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PixelFormat(enum.IntEnum):
    RGB888 = 1  # packed R, G, B bytes, row-major
    YUV420 = 2  # planar I420: Y plane, then U and V at half resolution

    @classmethod
    def named(cls, name: str) -> PixelFormat:
        """The format a configuration names ([camera] pixel_format: "rgb888" or "yuv420")."""
        return cls[name.upper()]


@dataclass(frozen=True, slots=True)
class FrameFormat:
    pixel_format: PixelFormat
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The frame's uint8 array: (h, w, 3) RGB, or I420's planes stacked as (h * 3 / 2, w)."""
        if self.pixel_format == PixelFormat.RGB888:
            return (self.height, self.width, 3)
        return (self.height * 3 // 2, self.width)

    @property
    def nbytes(self) -> int:
        if self.pixel_format == PixelFormat.RGB888:
            return self.width * self.height * 3
        return self.width * self.height * 3 // 2
