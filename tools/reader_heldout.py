#!/usr/bin/env python3
"""Two gesture readers on strokes neither was tuned to: the bench's patterns (tools/bench_strokes.py) with
other seeds, the bundled model run offline on every frame (no live pipeline: each pose arrives a fixed
delay plus |N(0, 0.5 ms)| after capture), both readers fed the same poses, onsets (impact + latency_ms, or
when fired if later) against the true impacts.

    git show COMMIT:lalelu/gestures/reader.py > /tmp/old_reader.py
    .venv/bin/python tools/reader_heldout.py --old /tmp/old_reader.py [--seeds 100 200] [--json out.json]

Keypoints are cached in --cache (the model takes most of the time: ~2 min a seed on 2 vCPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from bench_strokes import CASES

from lalelu.camera.still import StillSource
from lalelu.cli.wav import versus_impacts
from lalelu.config import CameraConfig, EngineConfig
from lalelu.engine import engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.gestures import reader as this_reader
from lalelu.gestures.mapping import load_mapping
from lalelu.gestures.recording import sound_ns

PATTERNS = ("q120", "q200", "gentle120", "accents100", "soft150", "mixed110")
DELAY_MS = {100: 5.3, 200: 3.7}  # this machine's capture-to-pose p50 in the bench's live runs
LATENCY_MS = 10.0


def load_reader(path: Path):
    spec = importlib.util.spec_from_file_location("other_reader", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_reader"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def keypoints(name: str, seed_add: int, fps: int, seconds: float, cache: Path, estimator) -> tuple:
    case = dict(CASES[name], strokes_seed=CASES[name].get("strokes_seed", 0) + seed_add)
    cam = dataclasses.replace(
        CameraConfig(), source="still", width=320, height=240, fps=fps, pixel_format="rgb888", **case
    )
    src = StillSource(cam)
    n = int(seconds * fps)
    path = cache / f"{name}-{seed_add}-{fps}-{n}.npy"
    if path.exists():
        kps = np.load(path)
    else:
        kps = np.zeros((n, 17, 3), np.float32)
        for i in range(n):
            estimator.estimate(src.render(i), src.pixel_format, cam.width, cam.height, kps[i])
        np.save(path, kps)
    return kps, src.motion.impacts(n / fps)


def play(module, mapping, kps: np.ndarray, fps: int, seed: int) -> list:
    hits: list = []
    reader = module.GestureReader(mapping, 320, 240, hits.append, lambda *_: None, int(LATENCY_MS * 1e6))
    rng = np.random.default_rng(seed)
    for i in range(len(kps)):
        t = int(i / fps * 1e9)
        reader.update(t, kps[i], t + int((DELAY_MS[fps] + abs(rng.normal(0, 0.5))) * 1e6))
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the other reader.py")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 200], help="added to each case's seed")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lalelu-heldout"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    old = load_reader(args.old)
    mapping = load_mapping(Path(__file__).resolve().parent.parent / "lalelu/data/mappings/demo-nod.toml")
    estimator = PoseEstimator(
        engine_from_config(dataclasses.replace(EngineConfig(), kind="litert", threads=1))
    )
    rows = []
    print(
        f"{'case':<11} {'seed+':>5} {'fps':>4}  {'old: missed extra mean SD':>27}  {'this: missed extra mean SD':>28}"
    )
    for name in PATTERNS:
        for seed_add in args.seeds:
            for fps in (100, 200):
                kps, impacts = keypoints(name, seed_add, fps, args.seconds, args.cache, estimator)
                row: dict = {"case": name, "seed_add": seed_add, "fps": fps}
                for label, module in (("old", old), ("this", this_reader)):
                    hits = play(module, mapping, kps, fps, seed_add)
                    onsets = np.array([sound_ns(h, LATENCY_MS) / 1e9 for h in hits])
                    row[label] = versus_impacts(onsets, impacts)
                rows.append(row)
                cells = [
                    f"{r.get('missed', '-'):>6} {r.get('extra', '-'):>5} {r.get('mean_ms', 0):>6.1f} {r.get('sd_ms', 0):>5.1f}"
                    for r in (row["old"], row["this"])
                ]
                print(f"{name:<11} {seed_add:>5} {fps:>4}  {cells[0]:>27}  {cells[1]:>28}", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"old": str(args.old), "latency_ms": LATENCY_MS, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
