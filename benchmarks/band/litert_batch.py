"""LiteRT: one interpreter resized to batch N against N invokes of batch 1 (the bundled int8 Lightning).

    python benchmarks/band/litert_batch.py OUT.json

On this 2-vCPU machine (benchmarks/band/litert-cpu-2vcpu.json) the resized interpreter takes N frames in
but its output stays [1, 1, 17, 3]: the file's single-pose decode keeps one pose for the whole batch, so a
batch cannot give each edge its own; and its time is N single frames' (within 10 %). LiteRT serves one
frame at a time."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from lalelu.engine import BUNDLED_MODEL


def median_ms(run, repeat: int = 200) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main() -> None:
    results = {}
    for threads in (1, 2):
        one = Interpreter(str(BUNDLED_MODEL), num_threads=threads)
        one.allocate_tensors()
        inp = one.get_input_details()[0]
        x = np.random.default_rng(0).integers(0, 255, inp["shape"], dtype=inp["dtype"])

        def single(interp=one, frame=x, index=inp["index"]) -> None:
            interp.set_tensor(index, frame)
            interp.invoke()

        for _ in range(20):
            single()
        for n in (2, 4, 8):
            batched_ms, shape = None, None
            try:
                b = Interpreter(str(BUNDLED_MODEL), num_threads=threads)
                b.resize_tensor_input(inp["index"], [n, *inp["shape"][1:]])
                b.allocate_tensors()
                xb = np.repeat(x, n, 0)

                def batch(interp=b, frames=xb, index=inp["index"]) -> None:
                    interp.set_tensor(index, frames)
                    interp.invoke()

                for _ in range(5):
                    batch()
                batched_ms = median_ms(batch)
                shape = list(b.get_tensor(b.get_output_details()[0]["index"]).shape)
            except Exception as exc:  # a model that refuses the resize: recorded, not fatal
                shape = repr(exc)[:200]
            results[f"threads{threads}-n{n}"] = {
                "batched_ms_p50": batched_ms,
                "serial_ms_p50": median_ms(lambda n=n: [single() for _ in range(n)]),
                "out_shape": shape,
            }
            print(threads, n, results[f"threads{threads}-n{n}"], flush=True)
    with open(sys.argv[1], "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
