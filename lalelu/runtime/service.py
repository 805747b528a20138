"""The start-up and tear-down every real-time app of lalelu shares, in one place.

with RealtimeService(cpus, sched_fifo, fifo_priority) as service:  # pinned from here on
    ...load the engine, open sockets (their threads inherit the pinning, not SCHED_FIFO)...
    service.go_realtime()   # SCHED_FIFO; report path warmed; GC frozen; 0.5 ms GIL hand-off
    service.ready()         # READY=1 to systemd; kick service.watchdog from the loop
    ...the loop...
# STOPPING=1, the watchdog closed: however the block ends
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from lalelu.runtime.realtime import freeze_gc, pin_to_cpus, short_gil_handoff, try_sched_fifo
from lalelu.runtime.sdnotify import Watchdog, notify
from lalelu.timing import warm_up_reports


class RealtimeService:
    def __init__(self, cpus: list[int], sched_fifo: bool, fifo_priority: int) -> None:
        self._cpus, self._sched_fifo, self._priority = cpus, sched_fifo, fifo_priority
        self.affinity: list[int] = []
        self.fifo = False
        self.watchdog = Watchdog.disabled()
        self._ready = False

    def __enter__(self) -> RealtimeService:
        # before the engine starts its threads, so they inherit the pinning
        self.affinity = pin_to_cpus(self._cpus)
        return self

    def go_realtime(self) -> None:
        self.fifo = try_sched_fifo(self._priority) if self._sched_fifo else False
        warm_up_reports()  # its first run would stall the loop (see timing.warm_up_reports)
        freeze_gc()
        short_gil_handoff()

    def ready(self) -> None:
        self.watchdog = Watchdog()
        notify("READY=1")
        self._ready = True

    def __exit__(self, *exc: object) -> None:
        if self._ready:
            notify("STOPPING=1")
        self.watchdog.close()


def handle_signals(
    stop: Callable[[], object], reload: Callable[[], object], test_note: Callable[[], object] | None = None
) -> None:
    """What a service's signals mean, the same for both apps: SIGTERM (systemd) and SIGINT (Ctrl-C) stop
    the loop, SIGHUP (`systemctl reload`) reloads the mapping, SIGUSR1 (`fab play-test`) plays a test
    note where there is a player. The handlers only ask; the loop does the work at its next pass."""
    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
    signal.signal(signal.SIGHUP, lambda *_: reload())
    if test_note is not None:
        signal.signal(signal.SIGUSR1, lambda *_: test_note())
