"""Frame -> pose in frame pixels with one engine: letterbox, infer, map back. Used by backend and edge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lalelu.clock import now_ns
from lalelu.engine import PoseEngine
from lalelu.engine.preprocess import Letterbox, LetterboxGeometry
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS


class PoseEstimator:
    def __init__(self, engine: PoseEngine) -> None:
        self.engine = engine
        self._letterboxes: dict[tuple[int, int, int], LetterboxGeometry] = {}
        self._model_out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        self._device_ms = getattr(engine, "last_device_ms", None)
        # an engine that letterboxes on its own device takes the raw frame (torch-cuda)
        self._infer_frame = getattr(engine, "infer_frame", None)
        # an engine that infers several raw frames in one call (torch-cuda): the backend batches a band's
        # frames into it; any other engine serves one frame at a time
        self._infer_frames = getattr(engine, "infer_frames", None)
        self.max_batch = int(getattr(engine, "max_batch", 1)) if self._infer_frames is not None else 1
        self._batch_out = np.zeros((self.max_batch, NUM_KEYPOINTS, 3), np.float32)
        # batches in flight at once (launch_batch, then collect_batch); 0: the engine only waits
        self.slots = int(getattr(engine, "slots", 0)) if self._infer_frames is not None else 0
        self._launched_ns = [0] * self.slots
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

    def prepare(
        self, fmt: PixelFormat, width: int, height: int, max_batch: int = 1, in_flight: int = 1
    ) -> None:
        """Set up for frames of this geometry now rather than at the first one; for batches of up to
        `max_batch` of them, `in_flight` at once, where the engine batches."""
        buffer = self.frame_buffer(fmt, width, height)
        buffer[:] = 0
        self.estimate(buffer, fmt, width, height, np.zeros((NUM_KEYPOINTS, 3), np.float32))
        prepare_batches = getattr(self.engine, "prepare_batches", None)
        if prepare_batches is not None and max_batch > 1 and self.max_batch > 1:  # not a compiled engine
            prepare_batches(fmt, width, height, max_batch, max(1, in_flight))

    def frame_buffer(self, fmt: PixelFormat, width: int, height: int) -> np.ndarray:
        """Where a frame of this geometry should be received: the engine's pinned memory where it has it."""
        make = getattr(self.engine, "frame_buffer", None)
        if make is not None:
            return make(fmt, width, height)
        return np.empty(FrameFormat(fmt, width, height).shape, np.uint8)

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
        self._read_device_ns()

    def _read_device_ns(self) -> None:
        """device_ns of the engine's last replay, where it times one."""
        if self._device_ms is not None:
            ms = self._device_ms()
            self.device_ns = int(ms * 1e6) if ms == ms else -1  # NaN: the engine ran off the GPU

    def estimate_batch(
        self, frames: Sequence[np.ndarray], fmt: PixelFormat, width: int, height: int, out: np.ndarray
    ) -> None:
        """Frames of one geometry (at most `max_batch`) -> out[k] (17, 3) rows (x, y, score) in the frame's
        pixels for frames[k], each as `estimate` would give it alone; the stage times are the batch's."""
        if self._infer_frames is None or len(frames) == 1:
            if len(frames) != 1:
                raise ValueError(f"{self.engine.name} infers one frame at a time, not {len(frames)}")
            self.estimate(frames[0], fmt, width, height, out[0])
            return
        self.collect_batch(self.launch_batch(frames, fmt, width, height), fmt, width, height, out)

    def launch_batch(self, frames: Sequence[np.ndarray], fmt: PixelFormat, width: int, height: int) -> int:
        """Start a batch (an engine with `slots`) and return its slot: collect it with collect_batch once
        batch_done says so. The frames' buffers must not change until then."""
        self.letterbox(fmt, width, height)  # a new geometry's set-up happens here, not at collection
        slot = int(self.engine.launch_frames(frames, fmt, width, height))  # type: ignore[attr-defined]
        self._launched_ns[slot] = now_ns()
        return slot

    def batch_done(self, slot: int) -> bool:
        return bool(self.engine.frames_done(slot))  # type: ignore[attr-defined]

    def collect_batch(self, slot: int, fmt: PixelFormat, width: int, height: int, out: np.ndarray) -> int:
        """A launched batch's poses into out[:n] in frame pixels (waiting for it if need be); returns n.
        engine_ns: launch to collected; device_ns: its GPU time."""
        n = int(self.engine.collect_frames(slot, self._batch_out))  # type: ignore[attr-defined]
        t1 = now_ns()
        lb = self.letterbox(fmt, width, height)
        for k in range(n):
            lb.to_frame(self._batch_out[k], out[k])
        t2 = now_ns()
        self.pre_ns, self.engine_ns, self.post_ns = 0, t1 - self._launched_ns[slot], t2 - t1
        self._read_device_ns()
        return n
