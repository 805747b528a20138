"""Does the machine itself stall? A pinned SCHED_FIFO loop that only reads the clock, for SECONDS:
every gap over 50 us is recorded with its time, then the gaps' sizes, their spacing in clusters, and the
CPU's steal time (time the hypervisor ran something else) over the run. No GPU, no sockets, no app.
    python3 benchmarks/live/cpu_jitter.py CPU SECONDS OUT.json
"""

import contextlib
import json
import os
import sys
import time

import numpy as np


def steal_ticks(cpu: int) -> int:
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8])
    return -1


def main() -> None:
    cpu, seconds, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    os.sched_setaffinity(0, [cpu])
    with contextlib.suppress(PermissionError):  # without it: the normal scheduler, still informative
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    steal0 = steal_ticks(cpu)
    gaps_at, gaps_ns = [], []
    start = last = time.monotonic_ns()
    end = start + int(seconds * 1e9)
    while last < end:
        now = time.monotonic_ns()
        if now - last > 50_000:
            gaps_at.append(last - start)
            gaps_ns.append(now - last)
        last = now
    steal = steal_ticks(cpu) - steal0
    at = np.array(gaps_at) / 1e9
    big = at[np.array(gaps_ns) > 200_000] if gaps_ns else at
    spacing = np.diff(big)
    spacing = spacing[spacing > 0.1]
    result = {
        "cpu": cpu,
        "seconds": seconds,
        "gaps_over_50us": len(gaps_ns),
        "gaps_over_200us": int(big.size),
        "max_gap_ms": max(gaps_ns, default=0) / 1e6,
        "median_cluster_spacing_s": float(np.median(spacing)) if spacing.size else 0.0,
        "steal_ms": steal * 1000 / os.sysconf("SC_CLK_TCK"),
        "gaps": [[round(t, 4), g] for t, g in zip(at.tolist(), gaps_ns, strict=True)],
    }
    with open(out, "w") as fh:
        json.dump(result, fh)
    print(json.dumps({k: v for k, v in result.items() if k != "gaps"}))


if __name__ == "__main__":
    main()
