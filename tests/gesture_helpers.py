"""Synthetic pose streams with known impact times."""

from __future__ import annotations

import math

import numpy as np

from lalelu.gestures.mapping import Control, mapping_from_dict
from lalelu.gestures.reader import GestureReader, Hit
from lalelu.keypoints import KEYPOINT_INDEX

W, H, FPS = 320, 240, 100.0
FRAME_NS = int(1e9 / FPS)
WRIST = KEYPOINT_INDEX["right_wrist"]


def make_engine(strike: dict | None = None, controls: list[dict] | None = None, **instrument):
    data: dict = {"instrument": instrument}
    if strike is not None:
        data["strike"] = [{"name": "hand", "keypoint": "right_wrist", **strike}]
    if controls:
        data["control"] = controls
    hits: list[Hit] = []
    ctrl: list[tuple[Control, int, int]] = []
    engine = GestureReader(mapping_from_dict(data), W, H, hits.append, lambda c, v, t: ctrl.append((c, v, t)))
    return engine, hits, ctrl


def drum(
    engine, seconds: float, y_of_t, x: float = 100.0, score_of_t=lambda t: 0.9, kp: int = WRIST, keep=None
) -> None:
    """`keep(i)` False: frame i never reaches the engine (skipped for the latency budget, lost)."""
    poses = np.zeros((17, 3), np.float32)
    poses[:, 2] = 0.9
    for i in range(int(seconds * FPS)):
        if keep is not None and not keep(i):
            continue
        t = i / FPS
        poses[kp] = (x, y_of_t(t) * H, score_of_t(t))
        engine.update(i * FRAME_NS, poses)


def cosine_strokes(period: float, amplitude: float, center: float = 0.5):
    """Down from center-amplitude to center+amplitude at t = period/2 (the impact), back up, repeat."""
    return lambda t: center - amplitude * math.cos(2 * math.pi * t / period)


def bounce_strokes(period: float, amplitude: float, bottom: float = 0.7):
    """A stick bouncing off a drum head at `bottom` every `period` s: fast at the impact, like a real stroke."""
    return lambda t: bottom - amplitude * abs(math.sin(math.pi * t / period))


def impacts(period: float, seconds: float) -> list[float]:
    return [
        period / 2 + k * period
        for k in range(int(seconds / period + 0.5))
        if period / 2 + k * period < seconds
    ]
