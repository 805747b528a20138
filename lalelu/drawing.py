"""How a pose is shown, in one place: `lalelu pose --out` draws with it, and the monitor page draws from
the description it serves (`page_description`), by the same rules: a keypoint under the mapping's
`min_score` is not found (drawn hollow and grey, never as a found joint, and no bone ends at it); the
mapping's zones and lines are drawn over the picture.
"""

from __future__ import annotations

import cv2
import numpy as np

from lalelu.gestures.mapping import Mapping
from lalelu.keypoints import KEYPOINT_NAMES, SKELETON

# RGB colours, shared with the page
BONE = (0, 200, 255)
FOUND = (255, 40, 40)
NOT_FOUND = (150, 150, 150)
ZONE = (255, 220, 0)
LINE = (0, 255, 120)


def found(keypoints: np.ndarray, min_score: float) -> np.ndarray:
    return keypoints[:, 2] >= min_score


def used_keypoints(mapping: Mapping) -> list[int]:
    """The keypoints the mapping plays with: what the framing check must see."""
    return sorted({s.keypoint for s in mapping.strikes} | {c.keypoint for c in mapping.controls})


def page_description(mapping: Mapping, width: int, height: int) -> dict:
    """What the monitor page needs to draw like `draw_pose`: JSON-ready."""
    return {
        "width": width,
        "height": height,
        "names": list(KEYPOINT_NAMES),
        "skeleton": [list(b) for b in SKELETON],
        "min_score": mapping.min_score,
        "used": used_keypoints(mapping),
        "colors": {"bone": BONE, "found": FOUND, "not_found": NOT_FOUND, "zone": ZONE, "line": LINE},
        "mapping": mapping.name,
        "strikes": [
            {
                "name": s.name,
                "keypoint": s.keypoint,
                "mode": s.mode,
                "axis": s.axis,
                "line": s.line,
                "zones": [{"name": z.name, "rect": list(z.rect), "note": z.note} for z in s.zones],
            }
            for s in mapping.strikes
        ],
    }


def draw_pose(rgb: np.ndarray, keypoints: np.ndarray, mapping: Mapping | None = None) -> np.ndarray:
    """A BGR copy of `rgb` with the pose (and the mapping's zones and lines) drawn on it."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = rgb.shape[:2]
    r = max(2, round(min(h, w) / 150))
    min_score = (mapping or Mapping()).min_score  # without a mapping, the mappings' default

    def bgr_of(c: tuple[int, int, int]) -> tuple[int, int, int]:
        return (c[2], c[1], c[0])

    if mapping is not None:
        for s in mapping.strikes:
            for z in s.zones:
                x0, y0, x1, y1 = z.rect
                p0, p1 = (round(x0 * w), round(y0 * h)), (round(x1 * w) - 1, round(y1 * h) - 1)
                cv2.rectangle(bgr, p0, p1, bgr_of(ZONE), 1)
                cv2.putText(
                    bgr, z.name, (p0[0] + 3, p0[1] + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, bgr_of(ZONE), 1
                )
            if s.mode == "line":
                if s.axis == "y":
                    cv2.line(bgr, (0, round(s.line * h)), (w - 1, round(s.line * h)), bgr_of(LINE), 1)
                else:
                    cv2.line(bgr, (round(s.line * w), 0), (round(s.line * w), h - 1), bgr_of(LINE), 1)
    ok = found(keypoints, min_score)
    for a, b in SKELETON:
        if ok[a] and ok[b]:
            pa, pb = keypoints[a], keypoints[b]
            cv2.line(bgr, (round(pa[0]), round(pa[1])), (round(pb[0]), round(pb[1])), bgr_of(BONE), r)
    for (x, y, _), is_found in zip(keypoints, ok, strict=True):
        if is_found:
            cv2.circle(bgr, (round(x), round(y)), r + 1, bgr_of(FOUND), -1)
        else:  # hollow and grey: where the model guessed, not a joint it found
            cv2.circle(bgr, (round(x), round(y)), r + 1, bgr_of(NOT_FOUND), 1)
    return bgr
