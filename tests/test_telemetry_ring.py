"""Telemetry: the edge's per-frame ring (slots by frame number, rows of older frames) and the round trip cut
into legs from both apps' rows."""

from __future__ import annotations

import numpy as np
import pytest

from lalelu.cli.plots import round_trip_legs
from lalelu.timing import BACKEND_TELEMETRY_DTYPE, TELEMETRY_DTYPE, TelemetryRing


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


def test_round_trip_legs_add_up_and_need_one_clock():
    n = 50
    edge, backend = np.zeros(n, TELEMETRY_DTYPE), np.zeros(n, BACKEND_TELEMETRY_DTYPE)
    edge["seq"] = backend["seq"] = np.arange(n)
    edge["capture_ns"] = np.arange(n) * 10_000_000
    edge["sent_ns"] = edge["capture_ns"] + 100_000
    backend["first_byte_ns"] = edge["sent_ns"] + 150_000
    backend["received_ns"] = backend["first_byte_ns"] + 80_000
    backend["replied_ns"] = backend["received_ns"] + 1_500_000 + np.arange(n) * 1000
    edge["pose_ns"] = backend["replied_ns"] + 90_000
    legs = round_trip_legs(edge, backend[5:])  # joined by seq: the backend's first rows are missing
    assert legs is not None and legs["total"]["n"] == n - 5
    assert legs["to_backend"]["p50"] == pytest.approx(0.15)
    assert legs["to_edge"]["p50"] == pytest.approx(0.09)
    parts = sum(legs[k]["p50"] for k in ("edge", "to_backend", "receive", "served", "to_edge"))
    assert parts == pytest.approx(legs["total"]["p50"])
    for stamp in ("first_byte_ns", "received_ns", "replied_ns"):  # another machine's clock
        backend[stamp] += 5_000_000_000
    assert round_trip_legs(edge, backend) is None
