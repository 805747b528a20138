"""Real-time helpers: a helper thread of a pinned process leaves the loop's CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs: one for the loop, one for the helper")
def test_a_helper_thread_leaves_the_loops_cpu_and_priority():
    code = """
import json, os, threading
from lalelu.runtime.realtime import leave_realtime, online_cpus
loop_cpu = max(online_cpus())
os.sched_setaffinity(0, {loop_cpu})
seen = {}
def helper():
    leave_realtime()
    seen["helper"] = sorted(os.sched_getaffinity(0))
t = threading.Thread(target=helper); t.start(); t.join()
print(json.dumps({"loop_cpu": loop_cpu, "helper": seen["helper"], "main": sorted(os.sched_getaffinity(0))}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["main"] == [got["loop_cpu"]]  # the loop's thread stays where it was
    assert got["helper"] and got["loop_cpu"] not in got["helper"]  # the helper moved off its CPU


def test_bench_accepts_a_cpu_outside_its_own_affinity():
    """An isolated CPU is outside a new process's affinity but may be chosen (`lalelu bench --cpus`)."""
    from lalelu.runtime.realtime import online_cpus

    assert set(os.sched_getaffinity(0)) <= online_cpus()
