"""The soak benchmark: a short real run of backend + edge, and its per-interval arithmetic on known rows."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from support import lalelu_cmd

from lalelu.cli.soak import memory_growth, per_interval
from lalelu.timing import TELEMETRY_DTYPE

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes


def test_per_interval_places_missing_frames_and_latency_in_their_interval():
    fps, interval_s = 10.0, 1.0  # 10 frames per interval
    seqs = np.array([s for s in range(100, 130) if s not in (103, 104, 117, 129)])  # 129: after the end
    rows = np.zeros(seqs.size, TELEMETRY_DTYPE)
    rows["seq"] = seqs
    rows["capture_ns"] = seqs * 100_000_000
    rows["pose_ns"] = rows["capture_ns"] + np.where(seqs >= 120, 30, 10) * 1_000_000  # 10 ms, then 30 ms
    out = per_interval(rows, fps, interval_s)
    assert [b["poses"] for b in out] == [8, 9, 9]
    assert [b["missing"] for b in out] == [2, 1, 0]
    assert [b["p50_ms"] for b in out] == [10.0, 10.0, 30.0]


def test_memory_growth_starts_after_settling():
    samples = [(0.0, 10.0, 5.0), (30.0, 50.0, 20.0), (60.0, 50.0, 20.0), (3600.0 + 30.0, 52.0, 20.5)]
    m = memory_growth(samples, settle_s=30.0)
    assert m["backend"]["settled_mb"] == 50.0 and m["backend"]["growth_mb"] == 2.0
    assert m["backend"]["growth_mb_per_hour"] == 2.0 and m["edge"]["growth_mb"] == 0.5


def test_soak_runs_edge_and_backend_and_reports_every_interval(tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run(
        lalelu_cmd(
            "soak", "--minutes", "0.2", "--interval-s", "4", "--sample-s", "1", "--quiet", "--json", str(out)
        ),
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "RSS backend" in r.stdout.decode()
    report = json.loads(out.read_text())
    # the drift line needs two full intervals: a machine too loaded to fill them prints none
    assert ("p99 drift" in r.stdout.decode()) == (report["p99_drift_ms"] is not None)
    edge = report["edge"]
    assert len(report["intervals"]) in (3, 4)  # a last frame or two may start a fourth
    assert (
        sum(b["poses"] for b in report["intervals"]) == edge["poses_received"] > 0
    )  # how many: this machine's load
    assert sum(b["missing"] for b in report["intervals"]) <= edge["frames_lost"] + edge["frames_skipped"]
    assert report["memory"]["backend"]["end_mb"] > 20 and report["memory"]["edge"]["end_mb"] > 20
    assert len(report["rss_samples"]) >= 10
