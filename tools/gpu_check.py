"""Keypoints of the torch-cuda engine on the GPU against the same network on the CPU (the path CI checks
against the TFLite model), on real photos; every variant's output poisoned before each run.

    python tools/gpu_check.py MODEL.onnx [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lalelu.cli.pose_image import estimate_pose
from lalelu.engine.torch_cuda import TorchCudaEngine

REFERENCE_NOSE = (227, 122)  # ../shared/models/README.md, on skimage.data.astronaut()


def photos() -> dict[str, np.ndarray]:
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut())
    wide = np.zeros((512, 812, 3), np.uint8)
    wide[:, 300:] = astronaut
    return {"astronaut": astronaut, "mirrored": np.ascontiguousarray(astronaut[:, ::-1]), "wide": wide}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cpu = TorchCudaEngine(args.model, mode="eager", device="cpu")
    variants = {
        "eager fp32": TorchCudaEngine(args.model, "fp32", "eager"),
        "graph fp32": TorchCudaEngine(args.model, "fp32", "graph"),
        "graph fp16": TorchCudaEngine(args.model, "fp16", "graph"),
        "graph compiled": TorchCudaEngine(args.model, "fp32", "graph", compile=True),
    }
    rows, ok = [], True
    for label, photo in photos().items():
        ref = estimate_pose(cpu, photo)
        seen = ref[:, 2] > 0.2
        for name, engine in variants.items():
            engine._out[:] = np.nan  # poison: a replay that writes nothing shows as NaN
            got = estimate_pose(engine, photo)
            px = float(np.hypot(*(got[seen, :2] - ref[seen, :2]).T).max())
            ds = float(np.abs(got[seen, 2] - ref[seen, 2]).max())
            finite = bool(np.isfinite(got).all())
            limit = 6.0 if "fp16" in name else 1.0  # photo pixels (512-px photo: 2.7 px per model pixel)
            good = finite and px <= limit and ds <= (0.03 if "fp16" in name else 0.005)
            ok &= good
            nose = float(np.hypot(got[0, 0] - REFERENCE_NOSE[0], got[0, 1] - REFERENCE_NOSE[1]))
            rows.append(
                {
                    "photo": label,
                    "variant": name,
                    "max_px_vs_cpu": px,
                    "max_score_diff": ds,
                    "finite": finite,
                    "pass": good,
                    "nose_px_vs_reference": nose if label == "astronaut" else None,
                }
            )
            print(
                f"{label:<10} {name:<11} max |dxy| {px:6.3f} px  max |dscore| {ds:.4f}  "
                f"{'ok' if good else 'FAIL'}"
            )
    if args.json:
        args.json.write_text(json.dumps({"keypoints_vs_cpu": rows, "all_pass": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
