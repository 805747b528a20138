"""Pose consumers: what the edge does with each pose. The gesture engine plugs in here."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from lalelu.keypoints import KEYPOINT_NAMES

log = logging.getLogger("lalelu.poses")


class PoseConsumer(Protocol):
    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        """Called once per frame, in frame order, with (17, 3) rows (x, y, score) in frame pixels."""

    def all_notes_off(self) -> None:
        """End every sounding note now (the pose stream has a hole: a note-off may never come)."""

    def close(self) -> None: ...


class LogConsumer:
    """Logs the nose every `every` poses (debug level: nothing is formatted unless asked for)."""

    def __init__(self, every: int = 100) -> None:
        self.every = every
        self.poses = 0

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        self.poses += 1
        if self.poses % self.every == 0 and log.isEnabledFor(logging.DEBUG):
            x, y, s = keypoints[0]
            log.debug("frame %d: %s at (%.1f, %.1f) score %.2f", seq, KEYPOINT_NAMES[0], x, y, s)

    def all_notes_off(self) -> None:
        pass

    def close(self) -> None:
        pass
