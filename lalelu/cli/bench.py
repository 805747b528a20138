"""`lalelu bench`: the inference benchmark, several configurations side by side in one run.

Method (the reference measurement, generalized): load, time the first inference, run N warm-up
inferences, then M timed ones, each on a fresh random input written outside the timed region. Each
configuration runs in its own child process, one after the other, so pinning and SCHED_FIFO apply to
exactly that configuration. `reference` is the plainest possible loop straight on the LiteRT
interpreter, the yardstick the engine's own numbers must agree with.

A configuration is words joined by '+': `pinned` (to --cpus), `fifo` (SCHED_FIFO), and for the
torch-cuda engine `eager` or `graph` (CUDA graph replay), `fp16` and `compile` (torch.compile). Engines that time the GPU with CUDA
events (torch-cuda) report device-side figures beside the host-side ones (what the app waits for).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from lalelu.clock import sleep_until_ns
from lalelu.engine import GPU_ENGINES
from lalelu.engine.gpu_clock import nvml_sm_clock
from lalelu.errors import LaleluError
from lalelu.runtime.realtime import GOVERNOR, ISOLATED_CPUS, online_cpus, read_kernel_value
from lalelu.timing import summarize_ns

CONFIG_WORDS = ("plain", "pinned", "fifo", "reference", "eager", "graph", "fp16", "tf32", "compile")
DEFAULT_CONFIGS = {
    "torch-cuda": "eager,graph,graph+fp16,graph+compile,"
    "eager+pinned,graph+pinned,graph+fp16+pinned,graph+compile+pinned,graph+compile+fp16+pinned",
}
DEFAULT_CONFIGS_OTHER = "plain,pinned,pinned+fifo"


def check_config(engine: str, config: str) -> set[str]:
    words = set(config.split("+"))
    bad = words - set(CONFIG_WORDS)
    gpu_words = words & {"eager", "graph", "fp16", "tf32", "compile"}
    if bad or ("fifo" in words and "pinned" not in words) or (gpu_words and engine != "torch-cuda"):
        raise LaleluError(
            f"unknown configuration {config!r}: join {', '.join(CONFIG_WORDS)} with '+' "
            "(fifo needs pinned; eager/graph/fp16/tf32/compile are for --engine torch-cuda)"
        )
    if "reference" in words and engine != "litert":
        raise LaleluError(
            "the reference loop runs LiteRT only: drop 'reference' from --configs for this engine"
        )
    return words


def machine_facts() -> dict:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in read_kernel_value("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    facts: dict = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "isolated_cpus": read_kernel_value(ISOLATED_CPUS),
        "cmdline": read_kernel_value("/proc/cmdline"),
        "governor": read_kernel_value(GOVERNOR) or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "libraries": {},
    }
    for dist in (
        "numpy",
        "ai-edge-litert",
        "tensorflow",
        "tensorflow-cpu",
        "tensorrt",
        "torch",
        "opencv-python-headless",
        "lalelu-drums",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            facts["libraries"][dist] = metadata.version(dist)
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,clocks.sm,clocks.mem,pstate,power.draw"
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        facts["gpu"] = r.stdout.strip()
    return facts


def run_single(
    engine_name: str,
    model: str,
    threads: int,
    config: str,
    cpu: int,
    warmup: int,
    n: int,
    pace_hz: float = 0.0,
    gpu_clock: bool = True,
) -> dict:
    """One configuration in this process; `pace_hz` > 0 waits for the next period between frames the way
    the live loop waits for the camera (back-to-back hides what the idle gaps do to clocks and caches)."""
    from lalelu.runtime.realtime import freeze_gc, try_sched_fifo

    words = check_config(engine_name, config)
    if "pinned" in words:
        os.sched_setaffinity(0, [cpu])  # before the engine starts its threads, so they inherit it
    fifo = try_sched_fifo(50) if "fifo" in words else False
    rng = np.random.default_rng(0)
    device_ms = None
    if "reference" in words:
        from ai_edge_litert.interpreter import Interpreter

        from lalelu.engine import BUNDLED_MODEL

        it = Interpreter(model_path=model or str(BUNDLED_MODEL), num_threads=threads)
        it.allocate_tensors()
        idx = it.get_input_details()[0]["index"]
        x = np.zeros(it.get_input_details()[0]["shape"], it.get_input_details()[0]["dtype"])

        def fill() -> None:
            x[:] = rng.integers(0, 256, x.shape, dtype=np.uint8)

        def infer() -> None:
            it.set_tensor(idx, x)
            it.invoke()
    else:
        from lalelu.engine import create_engine

        engine = create_engine(
            engine_name,
            Path(model) if model else None,
            threads,
            precision=next((p for p in ("fp16", "tf32") if p in words), "fp32"),
            cuda_graph="eager" not in words,
            compile="compile" in words,
        )
        out = np.zeros((17, 3), np.float32)
        device_ms = getattr(engine, "last_device_ms", None)
        buf = engine.input

        def fill() -> None:
            buf[:] = rng.integers(0, 256, buf.shape, dtype=np.uint8).astype(buf.dtype)

        def infer() -> None:
            engine.infer(out)

    fill()
    t0 = time.perf_counter_ns()
    infer()
    first = time.perf_counter_ns() - t0
    for _ in range(warmup):
        fill()
        infer()
    freeze_gc()
    times = np.zeros(n, np.int64)
    device_ns = np.zeros(n, np.int64)
    sm_mhz = np.zeros(n, np.int64)
    sm_clock = nvml_sm_clock() if engine_name in GPU_ENGINES and gpu_clock else None
    period_ns = int(1e9 / pace_hz) if pace_hz else 0
    next_ns = time.monotonic_ns()
    for i in range(n):
        fill()
        if period_ns:
            next_ns += period_ns
            sleep_until_ns(next_ns)
        t0 = time.perf_counter_ns()
        infer()
        times[i] = time.perf_counter_ns() - t0
        if device_ms is not None:
            device_ns[i] = int(device_ms() * 1e6)  # read after the timed region
        if sm_clock is not None:
            sm_mhz[i] = sm_clock()
    result = {
        "config": f"{config}@{pace_hz:g}Hz" if pace_hz else config,
        "pace_hz": pace_hz,
        "first_ms": first / 1e6,
        "stats_ms": summarize_ns(times),
        "sched_fifo": fifo,
        "affinity": sorted(os.sched_getaffinity(0)),
        "threads": threads,
        "engine": engine_name,
        "samples_ns": times.tolist(),
    }
    if device_ms is not None:
        result["device_stats_ms"] = summarize_ns(device_ns)
        result["device_samples_ns"] = device_ns.tolist()
    if sm_clock is not None:
        result["sm_mhz"] = {
            "min": int(sm_mhz.min()),
            "p50": float(np.median(sm_mhz)),
            "max": int(sm_mhz.max()),
        }
        result["sm_mhz_samples"] = sm_mhz.tolist()
    return result


def run_bench(
    engine_name: str,
    model: str,
    threads_list: list[int],
    configs: list[str],
    cpu: int,
    warmup: int,
    n: int,
    quiet: bool = False,
    pace_hz: float = 0.0,
    gpu_clock: bool = True,
) -> dict:
    for c in configs:
        check_config(engine_name, c)
    online = online_cpus()
    if cpu not in online:
        raise LaleluError(f"--cpus {cpu}: this host's CPUs are {sorted(online)}; choose one of them")
    results = []
    from tqdm import tqdm

    paces = (0.0, pace_hz) if pace_hz else (0.0,)
    runs = list(itertools.product(threads_list, configs, paces))
    # one step per configuration (each runs in a child); off when quiet or not on a terminal
    for threads, config, pace in tqdm(runs, desc="bench", unit="config", disable=True if quiet else None):
        cmd = [
            sys.executable,
            "-m",
            "lalelu.cli.bench",
            engine_name,
            model,
            str(threads),
            config,
            str(cpu),
            str(warmup),
            str(n),
            str(pace),
            "1" if gpu_clock else "0",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise LaleluError(f"benchmark {config} with {threads} threads failed:\n{r.stderr[-2000:]}")
        if not quiet:
            sys.stderr.write(
                r.stderr.replace("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", "")
            )
        results.append(json.loads(r.stdout.splitlines()[-1]))
    return {
        "machine": machine_facts(),
        "method": {"warmup": warmup, "n": n, "cpu_affinity": cpu, "pace_hz": pace_hz, "gpu_clock": gpu_clock},
        "results": results,
    }


def format_table(report: dict) -> str:
    """Host-side rows (what the app waits for) and, for engines timed with CUDA events, device-side rows."""
    head = (
        f"{'engine':<11} {'thr':>3} {'config':<18} {'side':<6} {'first':>8} {'mean':>7} {'std':>7} "
        f"{'min':>7} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'vs 1st':>7} {'SM MHz':>9}"
    )
    lines = [head, "-" * len(head)]
    base: dict[int, float] = {}
    for r in report["results"]:
        base.setdefault(r["threads"], r["stats_ms"]["mean"])
    for r in report["results"]:
        sides = [("host", r["stats_ms"])] + (
            [("device", r["device_stats_ms"])] if "device_stats_ms" in r else []
        )
        clock = r.get("sm_mhz")
        clock_text = f"{clock['min']:>4}-{clock['max']:<4}" if clock else ""
        for side, s in sides:
            ratio = s["mean"] / base[r["threads"]] if side == "host" else float("nan")
            lines.append(
                f"{r['engine']:<11} {r['threads']:>3} {r['config']:<18} {side:<6} {r['first_ms']:>8.2f} "
                f"{s['mean']:>7.3f} {s['std']:>7.3f} {s['min']:>7.3f} {s['p50']:>7.3f} {s['p99']:>7.3f} "
                f"{s['p99.9']:>7.3f} {s['max']:>7.3f} {ratio:>7.3f} {clock_text if side == 'host' else '':>9}"
            )
    lines.append(
        "(milliseconds; host = infer() as the app sees it, device = CUDA events around the GPU work; "
        "'vs 1st' = host mean / host mean of the first configuration at the same thread count; "
        "'@N Hz' = paced like a camera at N frames per second; SM MHz = the GPU's clock, lowest-highest)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    eng, mdl, thr, cfg, core, wu, count, pace, clock = sys.argv[1:10]
    res = run_single(eng, mdl, int(thr), cfg, int(core), int(wu), int(count), float(pace), clock == "1")
    print(json.dumps(res))
