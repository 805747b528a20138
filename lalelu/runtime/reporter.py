"""A helper thread for what the real-time loop hands off: summaries, log lines, state and telemetry files.

The loop only copies rows out of its ring and queues a call (microseconds, every few seconds); the work
(percentiles, JSON, file writes) runs here, on the normal scheduler and off the loop's CPUs. Formatting
yields the interpreter lock every few rows, so the loop waits at most ~0.1 ms for it, not a switch interval.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from lalelu.runtime.realtime import leave_realtime

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, name: str = "lalelu-report") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._jobs.put((fn, args))

    def _run(self) -> None:
        leave_realtime()
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:  # a failed report must not end the reports after it
                log.exception("a background report failed")

    def close(self, timeout_s: float = 10.0) -> None:
        """Run what is queued, then stop."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
