#!/usr/bin/env python3
"""Cost per frame of the gesture reader + output (the pose consumer), p50/p99, as a table and JSON.

    python tools/bench_gestures.py [--frames 20000] [--output log|midi-jack] [--json out.json]

The input is a synthetic stream of two wrists striking at 4 Hz plus a CC control, at 100 fps.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import time

import numpy as np

from lalelu.gestures.consumer import GestureConsumer
from lalelu.gestures.mapping import mapping_from_dict
from lalelu.keypoints import KEYPOINT_INDEX
from lalelu.output.log import LogOutput
from lalelu.output.midi import MidiOutput
from lalelu.timing import summarize_ns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--output", choices=("log", "midi-jack"), default="log")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    zones = [{"rect": [0.0, 0.0, 0.5, 1.0], "note": 38}, {"rect": [0.5, 0.0, 1.0, 1.0], "note": 42}]
    mapping = mapping_from_dict(
        {
            "strike": [
                {"keypoint": "right_wrist", "zones": zones},
                {"keypoint": "left_wrist", "zones": zones},
            ],
            "control": [{"keypoint": "nose", "axis": "x", "cc": 1}],
        }
    )
    output = MidiOutput("lalelu-bench", "jack", virtual=True) if args.output == "midi-jack" else LogOutput()
    consumer = GestureConsumer(mapping, output, 320, 240)
    kp = np.zeros((17, 3), np.float32)
    kp[:, 2] = 0.9
    rw, lw, nose = KEYPOINT_INDEX["right_wrist"], KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["nose"]
    times = np.zeros(args.frames, np.int64)
    gc.collect()
    gc.freeze()
    gc.disable()
    for i in range(args.frames):
        t = i / 100.0
        kp[rw] = (80.0, 240 * (0.7 - 0.2 * abs(math.sin(math.pi * t / 0.25))), 0.9)
        kp[lw] = (240.0, 240 * (0.7 - 0.2 * abs(math.sin(math.pi * (t + 0.1) / 0.25))), 0.9)
        kp[nose] = (160.0 + 20 * math.sin(t), 60.0, 0.9)
        t0 = time.perf_counter_ns()
        consumer.on_pose(i, i * 10_000_000, kp)
        times[i] = time.perf_counter_ns() - t0
    gc.enable()
    consumer.close()
    stats = summarize_ns(times)
    result = {
        "output": args.output,
        "frames": args.frames,
        "hits": consumer.hits,
        "per_frame_us": {k: round(v * 1000, 2) for k, v in stats.items() if k != "n"},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    print(f"{'output':<10} {'frames':>7} {'hits':>5} {'p50 us':>8} {'p99 us':>8} {'max us':>8}")
    pf = result["per_frame_us"]
    print(
        f"{args.output:<10} {args.frames:>7} {consumer.hits:>5} {pf['p50']:>8.1f} {pf['p99']:>8.1f} {pf['max']:>8.1f}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
