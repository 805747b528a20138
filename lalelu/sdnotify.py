"""systemd notifications (sd_notify) without libsystemd: READY=1 once serving, WATCHDOG=1 while the loop
runs, so that a hung loop is restarted (units: Type=notify, WatchdogSec=). Does nothing outside systemd."""

from __future__ import annotations

import contextlib
import os
import socket
import time


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
