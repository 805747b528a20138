"""`lalelu bench`: its numbers agree with the plainest loop, and the report carries what a reader needs."""

import json
import os
import subprocess

import pytest
from support import lalelu_cmd, run_local_edge

from lalelu.cli.bench import format_table, run_bench
from lalelu.errors import LaleluError

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes


def test_bench_agrees_with_the_reference_loop():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    report = run_bench(
        "litert", "", [1], ["reference", "plain", "reference", "plain"], cpu, 20, 150, quiet=True
    )
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
    r = subprocess.run(
        lalelu_cmd(
            "bench",
            "--threads",
            "1",
            "--configs",
            "plain,pinned",
            "--cpus",
            "0",
            "--warmup",
            "5",
            "--n",
            "30",
            "--json",
            str(out),
            "--quiet",
            "--plot",
            str(tmp_path / "plots"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "pinned" in r.stdout and "p99.9" in r.stdout
    report = json.loads(out.read_text())
    assert {"cpu_model", "cpu_count", "isolated_cpus", "cmdline", "governor", "libraries"} <= set(
        report["machine"]
    )
    pinned = next(x for x in report["results"] if x["config"] == "pinned")
    assert pinned["affinity"] == [0]
    assert format_table(report).count("\n") == 4  # header, rule, two rows, the units line
    png = tmp_path / "plots" / "bench-litert-1threads.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_live_telemetry_is_summarized_and_plotted(tmp_path):
    telemetry = tmp_path / "live.jsonl"
    run_local_edge(30, 2, "--telemetry", str(telemetry), "--output", "none")
    r = subprocess.run(
        lalelu_cmd("bench", "--from-telemetry", str(telemetry), "--plot", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("edge stage") and any(x.startswith("inference") for x in lines)
    n_frames = len(telemetry.read_text().splitlines())
    assert f"{n_frames} frames" in lines[0] and n_frames >= 40
    assert (tmp_path / "live.png").stat().st_size > 10_000


def test_from_telemetry_rejects_other_files(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"hello": 1}\n')
    r = subprocess.run(
        lalelu_cmd("bench", "--from-telemetry", str(bad)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "is not a telemetry line" in r.stderr


def test_bench_refuses_unknown_configurations():
    with pytest.raises(LaleluError, match="unknown configuration 'fast'"):
        run_bench("litert", "", [1], ["fast"], 0, 1, 1, quiet=True)


def test_paced_runs_beside_back_to_back():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    report = run_bench("litert", "", [1], ["plain"], cpu, 2, 30, quiet=True, pace_hz=50.0)
    configs = [r["config"] for r in report["results"]]
    assert configs == ["plain", "plain@50Hz"]
    paced = report["results"][1]
    assert paced["pace_hz"] == 50.0 and paced["stats_ms"]["n"] == 30
    assert "@N Hz' = paced" in format_table(report)


def test_demo_telemetry_of_both_apps_is_joined_and_explained(tmp_path):
    tel = tmp_path / "tel"
    r = subprocess.run(
        lalelu_cmd("demo", "--seconds", "3", "--fps", "30", "--quiet", "--telemetry", str(tel)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    backend_rows = [json.loads(line) for line in (tel / "backend.jsonl").read_text().splitlines()]
    assert len(backend_rows) >= 40
    first = backend_rows[0]
    assert first["device_ns"] == -1 and first["sm_mhz"] == 0  # LiteRT on a CPU: no GPU fields
    assert first["first_byte_ns"] <= first["received_ns"] < first["replied_ns"]
    assert first["pre_ns"] > 0 and first["engine_ns"] > 0
    r = subprocess.run(
        lalelu_cmd(
            "bench",
            "--from-telemetry",
            str(tel / "backend.jsonl"),
            str(tel / "edge.jsonl"),
            "--plot",
            str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "edge stage" in r.stdout and "backend stage" in r.stdout
    assert any(line.startswith("others ") for line in r.stdout.splitlines())
    assert (tmp_path / "backend.png").stat().st_size > 10_000


def test_plot_without_matplotlib_is_refused_before_the_benchmark(monkeypatch, tmp_path, capsys):
    import importlib.util

    from lalelu.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    assert main(["bench", "--n", "100000", "--plot", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "--plot needs matplotlib: pip install 'lalelu-drums[bench]'" in out.err
    assert "p50" not in out.out  # refused before benchmarking: no table


def test_band_benchmark_runs_k_edges_on_one_backend_and_writes_their_figures(tmp_path):
    """tools/bench_band.py on this machine's CPU (LiteRT serves one frame at a time, so 'batched' is
    serial here): every edge of the cell measured over the window they shared, none lost."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "band.json"
    r = subprocess.run(
        [
            sys.executable,
            str(root / "tools/bench_band.py"),
            "--config",
            str(root / "lalelu/data/demo.toml"),
            "--cells",
            "2@20",
            "--seconds",
            "4",
            "--variants",
            "batched",
            "--backend-cpus",
            "0",
            "--edge-cpus",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| batched | 2 | 20 |" in r.stdout
    (cell,) = json.loads(out.read_text())["cells"]
    assert len(cell["edges"]) == 2 and cell["window_s"] > 1
    for edge in cell["edges"]:
        # a frame still in flight as an edge stops counts as lost in its whole-run summary: the window's own
        assert edge["frames"] > 10 and edge["no_pose_in_window"] == 0 and edge["local"] == 0, edge
        assert 0 < edge["p50_ms"] <= edge["p99_ms"] <= edge["max_ms"], edge
    served = cell["backend_frames_by_batch"]  # the edges' frames of the window, each in a call of its own
    assert served.keys() == {"1"} and served["1"] >= sum(e["frames"] for e in cell["edges"])
