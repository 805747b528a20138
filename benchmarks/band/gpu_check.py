"""On the GPU: the torch-cuda engine's batched graphs give each frame the pose it gets alone (the bundled
photo, mirrored and shifted, in both pixel formats), and what a replay costs per batch size.
    python benchmarks/band/gpu_check.py MODEL.onnx [OUT.json]"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lalelu.camera.still import load_photo
from lalelu.engine.estimator import PoseEstimator
from lalelu.engine.torch_cuda import TorchCudaEngine
from lalelu.frames import PixelFormat

engine = TorchCudaEngine(Path(sys.argv[1]), "fp32", "graph")
estimator = PoseEstimator(engine)
photo = load_photo()
# eight different pictures (the person shifted 40 px further each, every second one mirrored): a row of a
# batch swapped with another's would show
photos = [np.ascontiguousarray(np.roll(photo[:, :: (-1 if i % 2 else 1)], 40 * i, axis=1)) for i in range(8)]
w, h = 320, 240
result: dict = {"gpu": __import__("torch").cuda.get_device_name(0)}
for fmt in (PixelFormat.RGB888, PixelFormat.YUV420):
    estimator.prepare(fmt, w, h, max_batch=8)
    frames = []
    for p in photos[:8]:
        rgb = cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA)
        buf = estimator.frame_buffer(fmt, w, h)
        buf[:] = rgb if fmt == PixelFormat.RGB888 else cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        frames.append(buf)
    alone = np.zeros((8, 17, 3), np.float32)
    for k, f in enumerate(frames):
        estimator.estimate(f, fmt, w, h, alone[k])
    together = np.zeros((8, 17, 3), np.float32)
    row: dict = {}
    for n in range(1, 9):
        estimator.estimate_batch(frames[:n], fmt, w, h, together)
        diff = float(np.abs(together[:n] - alone[:n]).max())
        times = []
        for _ in range(300):
            t0 = time.perf_counter_ns()
            estimator.estimate_batch(frames[:n], fmt, w, h, together)
            times.append(time.perf_counter_ns() - t0)
        ms = np.array(times) / 1e6
        row[n] = {
            "max_abs_diff_vs_alone": diff,
            "call_p50_ms": float(np.median(ms)),
            "call_p99_ms": float(np.percentile(ms, 99)),
            "device_ms": estimator.device_ns / 1e6,
        }
        print(fmt.name, n, row[n], flush=True)
    # two batches in flight at once (the server's slots): each frame still gets its own pose, and what
    # running them side by side costs against one after the other
    for n in (1, 2, 4):
        a, b = frames[:n], frames[4 : 4 + n]
        side = np.zeros((8, 17, 3), np.float32)
        sa = estimator.launch_batch(a, fmt, w, h)
        sb = estimator.launch_batch(b, fmt, w, h)
        estimator.collect_batch(sa, fmt, w, h, side[:4])
        estimator.collect_batch(sb, fmt, w, h, side[4:])
        diff = max(
            float(np.abs(side[:n] - alone[:n]).max()), float(np.abs(side[4 : 4 + n] - alone[4 : 4 + n]).max())
        )
        both, one_then_other = [], []
        for _ in range(300):
            t0 = time.perf_counter_ns()
            sa = estimator.launch_batch(a, fmt, w, h)
            sb = estimator.launch_batch(b, fmt, w, h)
            estimator.collect_batch(sa, fmt, w, h, side[:4])
            estimator.collect_batch(sb, fmt, w, h, side[4:])
            both.append(time.perf_counter_ns() - t0)
            # every repeat checked: two slots side by side must not share scratch memory
            diff = max(diff, float(np.abs(side[:n] - alone[:n]).max()))
            diff = max(diff, float(np.abs(side[4 : 4 + n] - alone[4 : 4 + n]).max()))
            t0 = time.perf_counter_ns()
            estimator.estimate_batch(a, fmt, w, h, side[:4])
            estimator.estimate_batch(b, fmt, w, h, side[4:])
            one_then_other.append(time.perf_counter_ns() - t0)
        row[f"two-in-flight-{n}"] = {
            "max_abs_diff_vs_alone": diff,
            "side_by_side_p50_ms": float(np.median(both) / 1e6),
            "one_after_other_p50_ms": float(np.median(one_then_other) / 1e6),
        }
        print(fmt.name, f"two batches of {n}", row[f"two-in-flight-{n}"], flush=True)
    result[fmt.name] = row
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
