"""The edge's per-frame telemetry ring: slots by frame number, and rows that belong to older frames."""

from __future__ import annotations

import numpy as np

from lalelu.timing import TelemetryRing


def test_answered_between_leaves_out_unanswered_frames_and_stale_slots():
    ring = TelemetryRing(8)
    for seq in range(0, 20):
        if seq in (12, 13):  # dropped at capture: their slots keep frames 4 and 5
            continue
        row = ring.slot(seq)
        row["seq"], row["capture_ns"] = seq, seq * 10
        row["pose_ns"] = 0 if seq == 15 else seq * 10 + 3  # 15: sent, never answered
    rows = ring.answered_between(10, 20)
    assert rows["seq"].tolist() == [14, 16, 17, 18, 19]  # older than the ring's 8: gone; 12, 13, 15 out
    assert np.all(rows["pose_ns"] - rows["capture_ns"] == 3)
    assert ring.answered_between(17, 17).size == 0
