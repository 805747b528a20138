"""Frame -> pose in frame pixels with one engine: letterbox, infer, map back. Used by backend and edge."""

from __future__ import annotations

import numpy as np

from lalelu.clock import now_ns
from lalelu.engines import PoseEngine
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.preprocess import Letterbox, LetterboxGeometry, frame_shape
from lalelu.wire import PixelFormat


class PoseEstimator:
    def __init__(self, engine: PoseEngine) -> None:
        self.engine = engine
        self._letterboxes: dict[tuple[int, int, int], LetterboxGeometry] = {}
        self._model_out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        self._device_ms = getattr(engine, "last_device_ms", None)
        # an engine that letterboxes on its own device takes the raw frame (torch-cuda)
        self._infer_frame = getattr(engine, "infer_frame", None)
        # the last frame's stages (ns), for telemetry
        self.pre_ns = self.engine_ns = self.post_ns = 0
        self.device_ns = -1

    def letterbox(self, fmt: PixelFormat, width: int, height: int) -> LetterboxGeometry:
        key = (int(fmt), width, height)
        lb = self._letterboxes.get(key)
        if lb is None:
            # A new geometry allocates once; a camera keeps its geometry, so this is start-up work.
            if len(self._letterboxes) > 64:
                self._letterboxes.clear()
            if self._infer_frame is not None:  # the engine letterboxes: only the geometry, to map back
                in_h, in_w = self.engine.input.shape[:2]
                lb = LetterboxGeometry(width, height, in_w, in_h)
            else:
                lb = Letterbox(width, height, fmt, self.engine.input)
            self._letterboxes[key] = lb
        return lb

    def prepare(self, fmt: PixelFormat, width: int, height: int) -> None:
        """Set up for frames of this geometry now rather than at the first one."""
        buffer = self.frame_buffer(fmt, width, height)
        buffer[:] = 0
        self.estimate(buffer, fmt, width, height, np.zeros((NUM_KEYPOINTS, 3), np.float32))

    def frame_buffer(self, fmt: PixelFormat, width: int, height: int) -> np.ndarray:
        """Where a frame of this geometry should be received: the engine's pinned memory where it has it."""
        make = getattr(self.engine, "frame_buffer", None)
        if make is not None:
            return make(fmt, width, height)
        return np.empty(frame_shape(fmt, width, height), np.uint8)

    def estimate(self, frame: np.ndarray, fmt: PixelFormat, width: int, height: int, out: np.ndarray) -> None:
        """Write (17, 3) rows (x, y, score) in the frame's pixels into `out`."""
        t0 = now_ns()
        lb = self.letterbox(fmt, width, height)
        if isinstance(lb, Letterbox):
            lb(frame)
            t1 = now_ns()
            self.engine.infer(self._model_out)
        else:  # the engine takes the raw frame: colour conversion and letterbox run in it
            assert self._infer_frame is not None
            t1 = t0 = now_ns()
            self._infer_frame(frame, fmt, width, height, self._model_out)
        t2 = now_ns()
        lb.to_frame(self._model_out, out)
        t3 = now_ns()
        self.pre_ns, self.engine_ns, self.post_ns = t1 - t0, t2 - t1, t3 - t2
        if self._device_ms is not None:
            ms = self._device_ms()
            self.device_ns = int(ms * 1e6) if ms == ms else -1  # NaN: the engine ran off the GPU
