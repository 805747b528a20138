#!/usr/bin/env python3
"""A band on one backend: K edges, each pinned to a core of its own, sending to one backend on this machine,
the backend serving one frame at a time ("serial", [backend] max_batch = 1) against in batches ("batched"),
side by side in one run, as a table and JSON.

    python tools/bench_band.py --config benchmarks/live/demo-torch-cuda.toml --cells 1,2,4,8@100 4@200
                               [--seconds 12] [--backend-cpus 2] [--edge-cpus 4-15] [--max-batch 8]
                               [--baseline DIR] [--keep DIR] [--json out.json]

Each cell (K edges at F fps, one variant) starts a fresh backend and its K edges at once (the bundled still
photo, --seconds each), both apps writing per-frame telemetry. Per edge: capture-to-pose p50, p99 and max
over the window in which all K edges ran (their first second left out), frames skipped by its latency
budget and lost (whole run). The backend's rows in that window give the frames-per-engine-call histogram.
`--baseline DIR`: a third variant, the backend of another checkout (e.g. the commit before the batching)
with the same configuration minus the keys it does not know, and this checkout's edges. Each edge connects
from its own loopback address (127.0.0.2, ...), as each Pi of a band has its own: the backend counts
connections and frame shares per address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lalelu.cli.bench import machine_facts  # noqa: E402
from lalelu.cli.demo import log_tail, wait_until_ready  # noqa: E402
from lalelu.errors import LaleluError  # noqa: E402
from lalelu.runtime.realtime import cpu_list  # noqa: E402
from lalelu.timing import frames_per_call  # noqa: E402

NEW_KEYS = {
    ("backend", "max_batch"),
    ("backend", "batches_in_flight"),
}  # what a baseline checkout from before the batching does not know


def parse_cells(specs: list[str]) -> list[tuple[int, float]]:
    """ "1,2,4@100" "4@200" -> [(1, 100.0), (2, 100.0), (4, 100.0), (4, 200.0)]."""
    cells = []
    for spec in specs:
        ks, _, fps = spec.partition("@")
        if not fps:
            raise SystemExit(f"bench_band: cell {spec!r} needs @FPS, e.g. 1,2,4,8@100")
        cells.extend((int(k), float(fps)) for k in ks.split(","))
    return cells


def toml_text(data: dict) -> str:
    """The configuration's sections back as TOML (strings, numbers, booleans and lists of them)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return "".join(
        f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) + "\n"
        for section, body in data.items()
    )


def edge_config(config: dict, index: int) -> dict:
    """Edge `index`'s configuration: its own loopback address, as each Pi of a band has its own (the backend
    counts connections and frame shares per address)."""
    data = {section: dict(body) for section, body in config.items()}
    data.setdefault("edge", {})["source_address"] = f"127.0.0.{index + 2}"
    return data


def cell_config(base: dict, fps: float, max_batch: int | None, in_flight: int = 2) -> dict:
    data = {section: dict(body) for section, body in base.items()}
    data.setdefault("camera", {})["fps"] = fps
    data.setdefault("edge", {})["fallback"] = False  # the edges measure the backend, never their own engine
    data.setdefault("output", {})["kind"] = "log"
    # no monitor page: K edges would each start its process at once and all but one fail on its port (the
    # H100 run of 2026-12-06 had it on: with K = 4 and 8 every edge's first 0.3 s ran 20-60 ms late while
    # the backend served each frame in 1.5 ms; whether the monitors' start was why is for the next run)
    data["monitor"] = {"enabled": False}
    model = data.get("engine", {}).get("model", "")
    if model and not Path(model).is_absolute():  # as this checkout sees it: a baseline tree runs elsewhere
        data["engine"]["model"] = str((ROOT / model).resolve())
    backend = data.setdefault("backend", {})
    backend["max_fps_per_edge"] = max(fps * 1.5, 250.0)
    if max_batch is None:
        for section, key in NEW_KEYS:
            data.get(section, {}).pop(key, None)
    else:
        backend["max_batch"] = max_batch
        backend["batches_in_flight"] = in_flight
    return data


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cell(
    tree: Path,
    config: dict,
    k: int,
    seconds: float,
    backend_cpus: list[int],
    edge_cpus: list[int],
    work: Path,
) -> dict:
    """One backend of `tree` and `k` edges of this checkout; the per-edge figures and the backend's batch
    histogram."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.toml"
    cfg_path.write_text(toml_text(config))

    def env_of(checkout: Path) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH", "")) if p)
        return env

    cli = [sys.executable, "-m", "lalelu"]
    ready = work / "backend.json"
    with contextlib.ExitStack() as stack:
        backend_log = stack.enter_context(open(work / "backend.log", "wb"))
        backend = subprocess.Popen(
            [
                *cli,
                "backend",
                "--config",
                str(cfg_path),
                "--port",
                "0",
                "--ready-file",
                str(ready),
                "--telemetry",
                str(work / "backend.jsonl"),
                "--cpus",
                ",".join(map(str, backend_cpus)),
            ],
            env=env_of(tree),
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=backend_log,
        )
        edges: list[subprocess.Popen] = []
        try:
            try:
                port = wait_until_ready(backend, ready, timeout_s=300, quiet=True)["port"]
            except LaleluError as exc:
                raise LaleluError(f"{exc}{log_tail(work, 'backend')}") from None
            for e in range(k):
                log = stack.enter_context(open(work / f"edge{e}.log", "wb"))
                edge_cfg = work / f"edge{e}.toml"
                edge_cfg.write_text(toml_text(edge_config(config, e)))
                edges.append(
                    subprocess.Popen(
                        [
                            *cli,
                            "edge",
                            "--config",
                            str(edge_cfg),
                            "--backend",
                            f"127.0.0.1:{port}",
                            "--seconds",
                            str(seconds),
                            "--json",
                            str(work / f"edge{e}.json"),
                            "--telemetry",
                            str(work / f"edge{e}.jsonl"),
                            "--cpus",
                            str(edge_cpus[e % len(edge_cpus)]),
                        ],
                        env=env_of(ROOT),  # the edges are this checkout's: only the backend differs
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
            for e, edge in enumerate(edges):
                if edge.wait(timeout=seconds + 120) != 0:
                    raise LaleluError(
                        f"edge {e} exited with code {edge.returncode}{log_tail(work, f'edge{e}')}"
                    )
        finally:
            for edge in edges:
                if edge.poll() is None:
                    edge.kill()
            backend.terminate()
            try:
                backend.wait(timeout=30)
            except subprocess.TimeoutExpired:
                backend.kill()
    return analyse_cell(work, k)


def analyse_cell(work: Path, k: int) -> dict:
    rows = [read_rows(work / f"edge{e}.jsonl") for e in range(k)]
    summaries = [json.loads((work / f"edge{e}.json").read_text()) for e in range(k)]
    if any(not r for r in rows):
        raise LaleluError(f"an edge of {work} wrote no telemetry")
    # the window in which every edge ran, its first second (connection, warm-up) left out
    start = max(r[0]["capture_ns"] for r in rows) + 1_000_000_000
    end = min(r[-1]["capture_ns"] for r in rows)
    if end <= start:
        raise LaleluError(f"the {k} edges of {work} did not run at the same time for more than a second")
    per_edge = []
    for r, s in zip(rows, summaries, strict=True):
        seqs = [x["seq"] for x in r if start <= x["capture_ns"] <= end and x["pose_ns"] > 0]
        lat = np.array(
            [
                x["pose_ns"] - x["capture_ns"]
                for x in r
                if start <= x["capture_ns"] <= end and x["pose_ns"] > 0
            ],
            np.float64,
        )
        lat /= 1e6
        per_edge.append(
            {
                "frames": int(lat.size),
                "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
                "max_ms": float(lat.max()) if lat.size else None,
                "local": sum(x.get("local", 0) for x in r),
                "inferred": s.get("frames_inferred", 0),
                "dropped_at_capture": s.get("frames_dropped_at_capture", 0),
                # whole run (the first frames while K edges connect at once, the last in flight at exit)
                "skipped": s.get("frames_skipped", 0),
                "lost": s.get("frames_lost", 0),
                # frames captured in the window without a pose: skipped by the edge's budget, or lost
                "no_pose_in_window": (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0,
            }
        )
    backend = [x for x in read_rows(work / "backend.jsonl") if start <= x["capture_ns"] <= end]
    sizes = np.array([x.get("batch", 1) or 1 for x in backend], np.int64)
    histogram = {str(n): int((sizes == n).sum()) for n in sorted(set(sizes.tolist()))}  # frames by call size
    return {
        "edges": per_edge,
        "window_s": (end - start) / 1e9,
        "backend_frames_by_batch": histogram,
        "mean_batch": frames_per_call(sizes) if sizes.size else None,
        "engine_p50_ms": float(np.median([x["engine_ns"] for x in backend]) / 1e6) if backend else None,
    }


VARIANT_ORDER = ("baseline", "serial", "batched-wait", "batched", "batched-4")


def reanalyse(kept: Path) -> list[dict]:
    """The cells of a --keep folder (VARIANT-kK-FPS each), analysed again in the order a run makes them."""
    cells = []
    for cell in kept.iterdir():
        m = re.fullmatch(r"(.+)-k(\d+)-([\d.]+)", cell.name)
        if m is None or not cell.is_dir():
            continue
        variant, k, fps = m[1], int(m[2]), float(m[3])
        entry: dict = {"variant": variant, "k": k, "fps": fps}
        try:
            entry.update(analyse_cell(cell, k))
        except (LaleluError, OSError, ValueError) as exc:
            entry["error"] = str(exc)
        cells.append(entry)
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    return sorted(cells, key=lambda c: (rank.get(c["variant"], len(rank)), c["variant"], c["fps"], c["k"]))


def headline(cell: dict) -> dict:
    edges = [e for e in cell["edges"] if e["p99_ms"] is not None]
    return {
        "p50_ms": float(np.median([e["p50_ms"] for e in edges])) if edges else None,
        "p99_ms": max(e["p99_ms"] for e in edges) if edges else None,  # the worst edge's
        "max_ms": max(e["max_ms"] for e in edges) if edges else None,
        "skipped": sum(e["skipped"] for e in cell["edges"]),
        "lost": sum(e["lost"] for e in cell["edges"]),
        "no_pose": sum(e.get("no_pose_in_window", 0) for e in cell["edges"]),
    }


def table(results: list[dict]) -> str:
    singles = {
        (r["variant"], r["fps"]): headline(r)["p99_ms"] for r in results if r["k"] == 1 and "error" not in r
    }
    lines = [
        "| variant | edges | fps | p50 ms (median edge) | p99 ms (worst edge) | max ms | p99 / one edge's "
        "| no pose in window | skipped, lost (whole run) | frames per call | engine p50 ms (launch to collected) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['k']} | {r['fps']:g} | failed: {r['error']} |")
            continue
        h = headline(r)
        single = singles.get((r["variant"], r["fps"])) or singles.get((r["variant"], 100.0))
        ratio = f"{h['p99_ms'] / single:.2f}" if single and h["p99_ms"] else "-"
        lines.append(
            f"| {r['variant']} | {r['k']} | {r['fps']:g} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['max_ms']:.2f} "
            f"| {ratio} | {h['no_pose']} | {h['skipped']}, {h['lost']} | {r['mean_batch'] or 0:.2f} "
            f"| {r['engine_p50_ms'] or 0:.2f} |"
        )
    return "\n".join(lines)


def write_json(args: argparse.Namespace, facts: dict, results: list[dict]) -> None:
    args.json.write_text(
        json.dumps(
            {"machine": facts, "config": str(args.config), "argv": sys.argv[1:], "cells": results}, indent=1
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "benchmarks/live/demo-torch-cuda.toml")
    p.add_argument("--cells", nargs="+", default=["1,2,4,8@100", "4@200"], help="K,K,...@FPS (%(default)s)")
    p.add_argument("--seconds", type=float, default=12.0, help="each edge's run (%(default)s)")
    p.add_argument("--backend-cpus", default="2", help="the backend's core(s) (%(default)s)")
    p.add_argument("--edge-cpus", default="4-15", help="the edges' cores, one each, in turn (%(default)s)")
    p.add_argument("--max-batch", type=int, default=8, help="[backend] max_batch of 'batched' (%(default)s)")
    p.add_argument(
        "--variants",
        default="serial,batched",
        help="of serial, batched-wait, batched, batched-4 (%(default)s)",
    )
    p.add_argument("--baseline", type=Path, help="another checkout, run as the variant 'baseline' first")
    p.add_argument("--keep", type=Path, help="keep every cell's logs and telemetry here")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument(
        "--from", dest="source", type=Path, help="analyse the cells a --keep run left, run nothing"
    )
    args = p.parse_args(argv)
    if args.source is not None:
        results = reanalyse(args.source)
        print(table(results))
        if args.json is not None:  # another machine's run: this machine's facts would mislead
            write_json(args, {"analysed_offline_from": str(args.source)}, results)
        return 1 if any("error" in r for r in results) else 0
    base = tomllib.loads(args.config.read_text())
    # (name, checkout, max_batch, batches in flight): serial is this checkout one frame at a time,
    # batched-wait waits for each batch, batched starts a batch beside a running one, batched-4 beside three
    known = {
        "serial": (1, 1),
        "batched-wait": (args.max_batch, 1),
        "batched": (args.max_batch, 2),
        "batched-4": (args.max_batch, 4),
    }
    variants: list[tuple[str, Path, int | None, int]] = []
    if args.baseline is not None:
        variants.append(("baseline", args.baseline.resolve(), None, 1))
    for name in args.variants.split(","):
        if name not in known:
            raise SystemExit(f"bench_band: unknown variant {name!r}: choose from {', '.join(known)}")
        variants.append((name, ROOT, *known[name]))
    cells = parse_cells(args.cells)
    backend_cpus, edge_cpus = sorted(cpu_list(args.backend_cpus)), sorted(cpu_list(args.edge_cpus))
    facts = machine_facts()
    results = []
    with tempfile.TemporaryDirectory(prefix="lalelu-band-") as tmp:
        work = args.keep or Path(tmp)
        for name, tree, max_batch, in_flight in variants:
            for k, fps in cells:
                label = f"{name}-k{k}-{fps:g}"
                print(f"bench_band: {label}", file=sys.stderr, flush=True)
                entry: dict = {"variant": name, "k": k, "fps": fps, "max_batch": max_batch}
                try:
                    entry.update(
                        run_cell(
                            tree,
                            cell_config(base, fps, max_batch, in_flight),
                            k,
                            args.seconds,
                            backend_cpus,
                            edge_cpus,
                            work / label,
                        )
                    )
                except LaleluError as exc:
                    entry["error"] = str(exc)
                    print(f"bench_band: {label}: {exc}", file=sys.stderr, flush=True)
                results.append(entry)
                if args.json is not None:  # after every cell: a run cut short keeps what it measured
                    write_json(args, facts, results)
    text = table(results)
    print(text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
