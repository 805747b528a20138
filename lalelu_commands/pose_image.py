"""`lalelu pose IMAGE`: the model on one image, keypoints in the image's pixels (drawn by lalelu.drawing)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lalelu.engines import PoseEngine
from lalelu.errors import LaleluError
from lalelu.inference import PoseEstimator
from lalelu.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from lalelu.wire import PixelFormat


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
