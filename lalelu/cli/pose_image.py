"""`lalelu pose IMAGE`: the model on one image, keypoints in the image's pixels (drawn by lalelu.drawing)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lalelu.engine import PoseEngine
from lalelu.engine.estimator import PoseEstimator
from lalelu.errors import LaleluError
from lalelu.frames import PixelFormat
from lalelu.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS

# A 108-MP phone photo decodes to 324 MB of RGB; a file declaring more is refused before it is decoded.
MAX_PIXELS = 120_000_000
# The model sees the picture at 192x192: a person needs some of those pixels in each direction.
MIN_SIDE = 32
JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG's IHDR or a JPEG's frame header declares, from the file's first bytes;
    None where neither is found (cv2 then decides)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(head) and head[i] == 0xFF:
            marker, length = head[i + 1], int.from_bytes(head[i + 2 : i + 4], "big")
            if marker in JPEG_FRAME_MARKERS:
                return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as RGB; LaleluError naming the problem for a missing file, something that is
    no image, a decompression bomb, or a picture too small to hold a person."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except FileNotFoundError:
        raise LaleluError(f"{path} does not exist: give the path of a PNG or JPEG file") from None
    except IsADirectoryError:
        raise LaleluError(f"{path} is a folder: give the path of a PNG or JPEG file") from None
    except OSError as exc:
        raise LaleluError(f"cannot open {path} ({exc.strerror})") from None
    size = declared_size(head)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise LaleluError(
            f"{path} declares {size[0]}x{size[1]} pixels, more than {MAX_PIXELS // 1_000_000} MP: not decoded "
            "(a decompression bomb, or a picture to scale down first)"
        )
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise LaleluError(f"cannot decode {path}: {str(exc).strip().splitlines()[-1]}") from None
    if img is None:
        raise LaleluError(f"cannot read {path} as an image: give a PNG or JPEG file")
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise LaleluError(
            f"{path} is {w}x{h} pixels: too small to hold a person (at least {MIN_SIDE} pixels a side)"
        )
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
