"""Record the pose stream of a session and replay it through the gesture reader, offline and deterministic.

A recording is a NumPy .npz: frame width/height, and per pose its sequence number, capture time (ns), the
time it reached the gesture reader (ns, same clock: the pipeline's delay, so a replay fires and schedules
exactly as the session did) and the (17, 3) keypoints in frame pixels. Poses are copied into preallocated chunks while playing and
written when the session ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lalelu.clock import now_ns
from lalelu.errors import LaleluError
from lalelu.gestures.mapping import Mapping
from lalelu.gestures.reader import GestureReader, Hit
from lalelu.keypoints import NUM_KEYPOINTS

CHUNK = 8192


class PoseRecorder:
    """A pose consumer that records and passes each pose on to `inner`."""

    def __init__(self, path: Path, width: int, height: int, inner=None) -> None:
        self.path, self.width, self.height, self.inner = Path(path), width, height, inner
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n = CHUNK  # forces a first chunk
        self.hits = 0

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        if self._n == CHUNK:  # one allocation every CHUNK frames (82 s at 100 fps)
            self._chunks.append(
                (
                    np.zeros(CHUNK, np.int64),
                    np.zeros(CHUNK, np.int64),
                    np.zeros((CHUNK, NUM_KEYPOINTS, 3), np.float32),
                    np.zeros(CHUNK, np.int64),
                )
            )
            self._n = 0
        seqs, times, kps, arrivals = self._chunks[-1]
        seqs[self._n], times[self._n], arrivals[self._n] = seq, capture_ns, now_ns()
        kps[self._n] = keypoints
        self._n += 1
        if self.inner is not None:
            self.inner.on_pose(seq, capture_ns, keypoints)
            self.hits = getattr(self.inner, "hits", 0)

    def all_notes_off(self) -> None:
        if self.inner is not None:
            self.inner.all_notes_off()

    def request_reload(self) -> None:
        if self.inner is not None:
            self.inner.request_reload()

    def request_test_note(self) -> None:
        if self.inner is not None:
            self.inner.request_test_note()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        if not self._chunks:
            return
        last = len(self._chunks) - 1
        parts = [
            (s[: self._n], t[: self._n], k[: self._n], a[: self._n]) if i == last else (s, t, k, a)
            for i, (s, t, k, a) in enumerate(self._chunks)
        ]
        np.savez_compressed(
            self.path,
            version=np.int64(1),
            width=np.int64(self.width),
            height=np.int64(self.height),
            seq=np.concatenate([p[0] for p in parts]),
            t_ns=np.concatenate([p[1] for p in parts]),
            keypoints=np.concatenate([p[2] for p in parts]),
            arrival_ns=np.concatenate([p[3] for p in parts]),
        )


def load_recording(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            rec = {k: data[k] for k in ("width", "height", "seq", "t_ns", "keypoints")}
            # Recordings made before arrival times were kept: as if each pose arrived at its capture.
            rec["arrival_ns"] = data["arrival_ns"] if "arrival_ns" in data.files else rec["t_ns"]
    except (OSError, ValueError, KeyError) as exc:
        raise LaleluError(
            f"{path} is not a lalelu recording ({exc}); make one with `lalelu edge --record FILE`"
        ) from exc
    if rec["keypoints"].ndim != 3 or rec["keypoints"].shape[1:] != (NUM_KEYPOINTS, 3):
        raise LaleluError(f"{path}: keypoints have shape {rec['keypoints'].shape}, expected (N, 17, 3)")
    return rec


def replay(rec: dict[str, np.ndarray], mapping: Mapping, latency_ms: float = 10.0) -> list[Hit]:
    """The hits the session's reader fired, with their impacts and the poses' arrival times."""
    hits: list[Hit] = []
    reader = GestureReader(
        mapping, int(rec["width"]), int(rec["height"]), hits.append, lambda *a: None, int(latency_ms * 1e6)
    )
    for t, kp, arrival in zip(rec["t_ns"], rec["keypoints"], rec["arrival_ns"], strict=True):
        reader.update(int(t), kp, int(arrival))
    return hits


def sound_ns(hit: Hit, latency_ms: float) -> int:
    """When the live output sounds `hit`: its impact plus the latency, or when it fired if that is later
    (or if it has no impact)."""
    if not hit.impact_ns:
        return hit.decided_ns or hit.t_ns
    return max(hit.impact_ns + int(latency_ms * 1e6), hit.decided_ns)


def hits_as_lines(hits: list[Hit], t0_ns: int, latency_ms: float = 10.0) -> list[str]:
    """One JSON line a hit, times in ms from `t0_ns`: the pose that fired it (t_ms), the estimated impact
    (impact_ms, null without one), when it fired and when it sounds."""
    return [
        json.dumps(
            {
                "t_ms": round((h.t_ns - t0_ns) / 1e6, 3),
                "name": h.name,
                "note": h.note,
                "velocity": h.velocity,
                "impact_ms": round((h.impact_ns - t0_ns) / 1e6, 3) if h.impact_ns else None,
                "fired_ms": round(((h.decided_ns or h.t_ns) - t0_ns) / 1e6, 3),
                "sound_ms": round((sound_ns(h, latency_ms) - t0_ns) / 1e6, 3),
            }
        )
        for h in hits
    ]
