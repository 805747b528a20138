"""Hostile input: 100,000 mutated packets against a live `lalelu backend`, a good edge beside them, and a
greedy host flooding real frames, which gets its share (max_fps_per_edge) and BUSY for the rest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes

PACKETS = 100_000


def test_backend_survives_100k_mutated_packets_and_keeps_serving_a_good_edge():
    cmd = [
        sys.executable,
        "-m",
        "lalelu.cli.fuzz",
        "--packets",
        str(PACKETS),
        "--flood",
        "--max-fps-per-edge",
        "60",  # above the good edge's 50 fps
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print("\nfuzz:", json.dumps(result))
    assert r.returncode == 0, result
    assert result["backend_alive"] and result["connections"] == PACKETS
    server = result["server"]
    # every packet reached the parser (a few are shorter than a header: the stream just ends)
    assert server["bad_packets"] >= 0.9 * PACKETS, server
    assert server["connections"] == PACKETS + 2  # + the good edge and the flooding host
    # the flood: its share inferred, the rest answered BUSY at once, and counted by the server
    assert result["flood_busy"] > result["flood_inferred"] > 0, result
    assert server["over_budget"] == result["flood_busy"]
    assert result["good_edge_errors"] == [] and result["good_edge_answered"] >= 100
    assert result["good_edge_answered"] == result["good_edge_sent"]
    # bounded memory: absurd length fields allocate nothing (the limit is checked first)
    assert result["server_rss_mb_peak"] - result["server_rss_mb_before"] < 32, result
