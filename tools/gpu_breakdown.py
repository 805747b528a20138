"""Where the torch-cuda engine's GPU time goes: the copy in, the network, the decode, each captured in a
CUDA graph of its own and timed with CUDA events over many replays, for memory layouts and torch.compile.

    python tools/gpu_breakdown.py MODEL.onnx [--n 2000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lalelu.engine.movenet_decode import MoveNetDecoder
from lalelu.engine.onnx_torch import movenet_network


def graph_time(fn, n: int) -> dict:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(5):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        start[i].record()
        g.replay()
        end[i].record()
        end[i].synchronize()  # one frame at a time, as the engine runs
    ms = np.array([s.elapsed_time(e) for s, e in zip(start, end, strict=True)])
    return {"p50": float(np.median(ms)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def kernel_count(fn) -> tuple[int, float]:
    """GPU kernels one call launches and their summed run time (no gaps), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if str(e.device_type).endswith("CUDA")]
    busy_us = sum(getattr(e, "device_time", 0.0) or getattr(e, "cuda_time", 0.0) for e in events)
    return len(events), busy_us / 1000


def measure(model: Path, layout: str, compiled: bool, n: int) -> dict:
    net, shape, _, consts = movenet_network(model)
    net = net.cuda().eval()
    if layout == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    host = torch.randint(0, 256, shape, dtype=torch.uint8).pin_memory()
    dev = torch.zeros((1, *shape), dtype=torch.uint8, device="cuda")
    dec = MoveNetDecoder(48, 48, "cuda", consts)
    run = net
    t0 = time.perf_counter()
    with torch.inference_mode():
        if compiled:
            run = torch.compile(net, mode="default", fullgraph=True)
            run(dev)
        compile_s = time.perf_counter() - t0
        heads = [h.clone() for h in run(dev)]
        kernels, busy_ms = kernel_count(lambda: dec(*run(dev)))
        return {
            "kernels": kernels,
            "kernel_busy_ms": busy_ms,
            "layout": layout,
            "compiled": compiled,
            "compile_s": compile_s,
            "copy_in": graph_time(lambda: dev[0].copy_(host, non_blocking=True), n),
            "network": graph_time(lambda: run(dev), n),
            "decode": graph_time(lambda: dec(*heads), n),
            "all": graph_time(lambda: (dev[0].copy_(host, non_blocking=True), dec(*run(dev))), n),
        }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    for layout in ("as-exported", "channels_last"):
        for compiled in (False, True):
            try:
                row = measure(args.model, layout, compiled, args.n)
            except Exception as exc:  # report and go on: these are experiments
                rows.append({"layout": layout, "compiled": compiled, "error": repr(exc)[:500]})
                print(layout, compiled, "failed:", repr(exc)[:500])
                continue
            rows.append(row)
            print(
                f"{layout:<14} compiled={compiled!s:<5} copy_in {row['copy_in']['p50']:.3f}  network "
                f"{row['network']['p50']:.3f}  decode {row['decode']['p50']:.3f}  all {row['all']['p50']:.3f} "
                f"(p99 {row['all']['p99']:.3f}) ms  kernels {row['kernels']} busy {row['kernel_busy_ms']:.3f} ms  "
                f"compile {row['compile_s']:.0f} s"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
