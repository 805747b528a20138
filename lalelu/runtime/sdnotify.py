"""systemd notifications (sd_notify) without libsystemd: READY=1 once serving, WATCHDOG=1 while the loop
runs, so that a hung loop is restarted (units: Type=notify, WatchdogSec=). Does nothing outside systemd."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from lalelu.runtime.state import write_whole


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr  # '@': Linux abstract namespace


def notify(message: str) -> bool:
    addr = _address()
    if addr is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), addr)
        except OSError:
            return False
    return True


class Watchdog:
    """`kick()` from the loop: sends WATCHDOG=1 at half the interval systemd asked for (WATCHDOG_USEC).
    The socket is opened once; a kick that is not due costs one clock read."""

    def __init__(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        pid = os.environ.get("WATCHDOG_PID")
        self.interval_s = usec / 2e6 if usec and (not pid or int(pid) == os.getpid()) else 0.0
        self._addr = _address()
        self._sock = (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self._addr and self.interval_s else None
        )
        self._next = 0.0

    @classmethod
    def disabled(cls) -> Watchdog:
        """One that does nothing: before the service is ready."""
        dog = cls.__new__(cls)
        dog.interval_s, dog._addr, dog._sock, dog._next = 0.0, None, None, 0.0
        return dog

    def kick(self) -> None:
        if self._sock is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            with contextlib.suppress(OSError):
                self._sock.sendto(b"WATCHDOG=1", self._addr)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class StartingUp:
    """While a service loads (seconds to minutes: a model, CUDA graphs, torch.compile), a helper thread
    tells systemd every `every_s` that it is still starting (EXTEND_TIMEOUT_USEC, so a slow but moving
    start is not killed at the unit's start timeout, and a stuck one still is, `extend_s` after its last
    sign of life, and at most `limit_s` in all) with what it is doing (STATUS=), and keeps `heartbeat` fresh
    for a parent process that waits for it (`lalelu demo`): its mtime is the last sign of life, its text
    the phase."""

    def __init__(
        self,
        phase: str,
        heartbeat: Path | None = None,
        every_s: float = 5.0,
        extend_s: float = 30.0,
        limit_s: float = 600.0,
    ) -> None:
        self.phase = phase  # what it does now: set it as the start goes on
        self.heartbeat = heartbeat
        self.every_s, self.extend_s = every_s, extend_s
        # The beats cannot tell a long compile from a hang (both may sit in native code): after limit_s
        # they stop, and the unit's start timeout ends a start that never finishes
        self.limit_s = limit_s
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lalelu-starting", daemon=True)

    def __enter__(self) -> StartingUp:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.heartbeat is not None:
            self.heartbeat.unlink(missing_ok=True)

    def _beat(self) -> None:
        status = f"{self.phase} ({time.monotonic() - self._t0:.0f} s)"
        notify(f"EXTEND_TIMEOUT_USEC={int(self.extend_s * 1e6)}\nSTATUS=starting: {status}")
        if self.heartbeat is not None:
            with contextlib.suppress(OSError):
                write_whole(self.heartbeat, status)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if time.monotonic() - self._t0 > self.limit_s:
                notify(f"STATUS=starting: {self.phase}: still not started after {self.limit_s:.0f} s")
                return
            self._beat()
