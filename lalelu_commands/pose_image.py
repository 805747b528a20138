"""`lalelu pose IMAGE`: the model on one image, keypoints in the image's pixels, optional skeleton drawing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lalelu.engines import PoseEngine
from lalelu.errors import LaleluError
from lalelu.inference import PoseEstimator
from lalelu.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS, SKELETON
from lalelu.protocol import PixelFormat


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise LaleluError(f"cannot read {path} as an image: give a PNG or JPEG file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def estimate_pose(engine: PoseEngine, rgb: np.ndarray) -> np.ndarray:
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    rgb = np.ascontiguousarray(rgb)
    PoseEstimator(engine).estimate(rgb, PixelFormat.RGB888, rgb.shape[1], rgb.shape[0], out)
    return out


def keypoints_json(kp: np.ndarray) -> dict:
    return {
        "keypoints": [
            {"name": name, "x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4)}
            for name, (x, y, s) in zip(KEYPOINT_NAMES, kp, strict=True)
        ]
    }


def draw_skeleton(rgb: np.ndarray, kp: np.ndarray, min_score: float = 0.2) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    r = max(2, round(min(rgb.shape[:2]) / 150))
    for a, b in SKELETON:
        if kp[a, 2] >= min_score and kp[b, 2] >= min_score:
            cv2.line(
                bgr, (round(kp[a, 0]), round(kp[a, 1])), (round(kp[b, 0]), round(kp[b, 1])), (255, 200, 0), r
            )
    for x, y, s in kp:
        if s >= min_score:
            cv2.circle(bgr, (round(x), round(y)), r + 1, (0, 0, 255), -1)
    return bgr
