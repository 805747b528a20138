"""What the tests share besides fixtures (conftest.py holds those): the reference keypoints, waiting, ports,
and `lalelu` processes. Test modules import it by name (pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lalelu.cli.demo import lalelu_command as lalelu_cmd

__all__ = ["REFERENCE", "Backend", "free_port", "lalelu_cmd", "run_local_edge", "wait_until"]

REFERENCE = {  # ../shared/models/README.md: (x, y) on skimage.data.astronaut(), 512x512
    "nose": (227, 122),
    "left_eye": (248, 103),
    "right_eye": (206, 101),
    "left_shoulder": (313, 258),
    "right_shoulder": (113, 252),
}


def wait_until(
    what: str,
    probe: Callable[[], Any],
    timeout_s: float = 10.0,
    every_s: float = 0.005,
    alive: subprocess.Popen | None = None,
    context: Callable[[], str] | None = None,
) -> Any:
    """probe() until it returns something truthy, and return that. Fails naming `what` after `timeout_s`,
    or as soon as the process `alive` has exited, with `context()` (logs, state) in the message. A probe
    that raises OSError counts as not yet (a server still starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = probe()
        except OSError:
            got = None
        if got:
            return got
        ended = alive is not None and alive.poll() is not None
        if ended or time.monotonic() >= deadline:
            told = ""
            if context is not None:
                try:
                    told = f"\n{context()}"
                except Exception as exc:  # a hung VM or a half-written file must not hide the failure
                    told = f"\n(and its evidence could not be gathered: {exc!r})"
            why = (
                f"the process exited ({alive.returncode})"
                if ended and alive
                else f"not within {timeout_s:g} s"
            )
            raise AssertionError(f"{what}: {why}{told}")
        time.sleep(every_s)


def free_port() -> int:
    """A loopback TCP port nothing listens on (for a server the test starts, or an unreachable one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_local_edge(
    fps: float, seconds: float, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`lalelu edge` inferring on its own (no backend, no SCHED_FIFO) on the moving photo; asserts it exits 0."""
    r = subprocess.run(
        lalelu_cmd("edge", "--backend", "", "--no-fifo", "--fps", str(fps), "--seconds", str(seconds), *args),
        capture_output=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr.decode()
    return r


class Backend:
    def __init__(self, tmp: Path, *args: str, max_files: int = 0) -> None:
        """`max_files`: the process's open-file limit (RLIMIT_NOFILE), to run it out of descriptors."""
        import resource

        def limit() -> None:
            if max_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        self.ready = tmp / f"ready-{time.monotonic_ns()}.json"
        self.log = open(tmp / "backend.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            lalelu_cmd("backend", "--port", "0", "--ready-file", str(self.ready), "--no-fifo", *args),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=limit,
        )
        from lalelu.cli.demo import wait_until_ready
        from lalelu.errors import LaleluError

        try:
            info = wait_until_ready(self.proc, self.ready)
        except LaleluError as exc:
            pytest.fail(f"{exc}: {(tmp / 'backend.log').read_text()}")
        self.port: int = info["port"]
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()
