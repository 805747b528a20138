"""The GPU's SM clock, sampled by a helper thread through NVML (`nvidia-ml-py`), read by the loop for free.

A GPU that idles between frames lowers its clock; the next frame then runs at a fraction of the speed until
the driver raises it again. The loop stores the last sample in each frame's telemetry row, so a slow frame
can be told apart from a slow CPU. Never an NVML call in the loop: a query takes tens of microseconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lalelu.runtime.realtime import leave_realtime

log = logging.getLogger(__name__)


def nvml_sm_clock(index: int = 0) -> Callable[[], int] | None:
    """A function returning GPU `index`'s SM clock in MHz (one NVML query), or None without NVML."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: the GPU clock is not sampled")
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        log.info("NVML unavailable (%s): the GPU clock is not sampled", exc)
        return None
    return lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)


class SmClockSampler:
    """`mhz`: the SM clock of GPU `index` at the last sample (0 until the first, or without NVML)."""

    def __init__(self, index: int = 0, period_s: float = 0.01) -> None:
        self.mhz = 0
        self._stop = threading.Event()
        self._period_s = period_s
        self._read = nvml_sm_clock(index)
        self._thread: threading.Thread | None = None
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, name="lalelu-gpu-clock", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        leave_realtime()
        assert self._read is not None
        while not self._stop.wait(self._period_s):
            try:
                self.mhz = self._read()
            except Exception as exc:  # pynvml.NVMLError: a driver that went away
                log.warning("NVML stopped answering (%s): the GPU clock is no longer sampled", exc)
                return

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(1.0)
            self._thread = None
