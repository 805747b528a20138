"""`lalelu bench`: its numbers agree with the plainest loop, and the report carries what a reader needs."""

import json
import os
import subprocess

import pytest
from conftest import lalelu_cmd

from lalelu.bench import format_table, run_bench
from lalelu.errors import LaleluError


def test_bench_agrees_with_the_reference_loop():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    report = run_bench("litert", "", [1], ["reference", "plain", "reference", "plain"], cpu, 20, 150, quiet=True)
    by = {}
    for r in report["results"]:
        by.setdefault(r["config"], []).append(r["stats_ms"]["p50"])
    ref, ours = min(by["reference"]), min(by["plain"])
    # Same model, same thread count, interleaved runs: the engine adds a 192x192x3 copy and nothing else.
    assert 0.8 < ours / ref < 1.25, (ours, ref)
    for r in report["results"]:
        assert r["stats_ms"]["n"] == 150 and len(r["samples_ns"]) == 150
        assert r["stats_ms"]["min"] <= r["stats_ms"]["p50"] <= r["stats_ms"]["p99"] <= r["stats_ms"]["max"]


def test_bench_command_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(lalelu_cmd("bench", "--threads", "1", "--configs", "plain,pinned", "--cpu-affinity", "0",
                                  "--warmup", "5", "--n", "30", "--json", str(out), "--quiet"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pinned" in r.stdout and "p99.9" in r.stdout
    report = json.loads(out.read_text())
    assert {"cpu_model", "cpu_count", "isolated_cpus", "cmdline", "governor", "libraries"} <= set(report["machine"])
    pinned = [x for x in report["results"] if x["config"] == "pinned"][0]
    assert pinned["affinity"] == [0]
    assert format_table(report).count("\n") == 4  # header, rule, two rows, the units line


def test_bench_refuses_unknown_configurations():
    with pytest.raises(LaleluError, match="unknown configuration 'fast'"):
        run_bench("litert", "", [1], ["fast"], 0, 1, 1, quiet=True)
