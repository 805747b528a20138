"""CPU pinning, SCHED_FIFO and GC control for the real-time loops; each says what it could not do."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ISOLATED_CPUS = "/sys/devices/system/cpu/isolated"
GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"


def read_kernel_value(path: str) -> str:
    """A /proc or /sys value, stripped; '' where this kernel or VM does not have it."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_list(text: str) -> set[int]:
    """A kernel CPU list as a set: '1-3,5' -> {1, 2, 3, 5}; '' -> empty; isolcpus flags such as
    "domain" or "managed_irq" are skipped."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi == "" or hi.isdigit()):
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def online_cpus() -> set[int]:
    """The CPUs this host runs. Isolated CPUs (isolcpus=) are among them but not in a new process's
    default affinity: they may be chosen explicitly, which is what they are for."""
    cpus = cpu_list(read_kernel_value("/sys/devices/system/cpu/online"))
    return cpus or set(range(os.cpu_count() or 1)) | os.sched_getaffinity(0)


def pin_to_cpus(cpus: list[int]) -> list[int]:
    """Pin this process (all threads created later inherit it); return the affinity read back."""
    if cpus:
        available = online_cpus()
        missing = [c for c in cpus if c not in available]
        if missing:
            log.warning("CPUs %s do not exist on this host (%d CPUs); not pinning", missing, os.cpu_count())
        else:
            os.sched_setaffinity(0, cpus)
    return sorted(os.sched_getaffinity(0))


def leave_realtime() -> None:
    """For a helper thread of a real-time process (reconnecting, say): back to the normal scheduler and
    onto the CPUs the real-time loop does not own. Pinned SCHED_FIFO like the loop, it would wait for
    the loop to block, which a saturated loop never does (an edge inferring locally on a slow Pi)."""
    # pid 0 means the calling thread for these two calls on Linux
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    isolated = cpu_list(read_kernel_value(ISOLATED_CPUS))
    others = online_cpus() - isolated - os.sched_getaffinity(0)
    if others:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, others)


def try_sched_fifo(priority: int) -> bool:
    if os.sched_getscheduler(0) == os.SCHED_FIFO:
        # systemd's CPUSchedulingPolicy=fifo: keep the service manager's priority; asking for another
        # one above the unit's LimitRTPRIO would only fail
        log.info("SCHED_FIFO priority %d (set by the service manager)", os.sched_getparam(0).sched_priority)
        return True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        log.warning(
            "SCHED_FIFO not permitted (needs CAP_SYS_NICE or LimitRTPRIO in the systemd unit); "
            "running with the normal scheduler"
        )
        return False
    except OSError as exc:
        log.info("SCHED_FIFO unavailable (%s); running with the normal scheduler", exc)
        return False
    log.info("SCHED_FIFO priority %d", priority)
    return True


GIL_SWITCH_INTERVAL_S = 0.0005


def freeze_gc() -> None:
    """Move everything allocated at start-up out of the collector's sight and stop automatic collection,
    so no collection pause lands in the frame loop."""
    gc.collect()
    gc.freeze()
    gc.disable()


def short_gil_handoff() -> None:
    """A helper thread (reports, reconnecting, the GPU clock) holding the interpreter lock when the loop
    wants it is asked to hand it over after 0.5 ms instead of Python's 5 ms."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
