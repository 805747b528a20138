"""Frame -> pose in frame pixels with one engine: letterbox, infer, map back. Used by backend and edge."""

from __future__ import annotations

import numpy as np

from lalelu.engines import PoseEngine
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.preprocess import Letterbox
from lalelu.protocol import PixelFormat


class PoseEstimator:
    def __init__(self, engine: PoseEngine) -> None:
        self.engine = engine
        self._letterboxes: dict[tuple[int, int, int], Letterbox] = {}
        self._model_out = np.zeros((NUM_KEYPOINTS, 3), np.float32)

    def letterbox(self, fmt: PixelFormat, width: int, height: int) -> Letterbox:
        key = (int(fmt), width, height)
        lb = self._letterboxes.get(key)
        if lb is None:
            # A new geometry allocates once; a camera keeps its geometry, so this is start-up work.
            if len(self._letterboxes) > 64:
                self._letterboxes.clear()
            lb = self._letterboxes[key] = Letterbox(width, height, fmt, self.engine.input)
        return lb

    def estimate(self, frame: np.ndarray, fmt: PixelFormat, width: int, height: int, out: np.ndarray) -> None:
        """Write (17, 3) rows (x, y, score) in the frame's pixels into `out`."""
        lb = self.letterbox(fmt, width, height)
        lb(frame)
        self.engine.infer(self._model_out)
        lb.to_frame(self._model_out, out)
