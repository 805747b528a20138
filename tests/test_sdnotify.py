"""systemd's notify protocol, for real: a datagram socket standing where systemd's NOTIFY_SOCKET is, and
the real backend and edge processes reporting READY=1 and kicking the watchdog."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import time

from support import lalelu_cmd


def _collect(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            got.append((time.monotonic(), sock.recv(256).decode()))
    return got


def _run_with_notify(tmp_path, *args: str, seconds: float) -> list[tuple[float, str]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.1)
        # WATCHDOG_USEC 1 s: kicks due every 0.5 s; no WATCHDOG_PID, as systemd sets it only when asked
        env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
        proc = subprocess.Popen(
            lalelu_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        got = _collect(sock, seconds)
        proc.terminate()
        proc.wait(20)
    return got


def test_backend_reports_ready_and_kicks_the_watchdog(tmp_path):
    got = _run_with_notify(tmp_path, "backend", "--port", "0", "--no-fifo", seconds=6)
    messages = [m for _, m in got]
    assert "READY=1" in messages
    # while it loads it says so, and asks systemd for more time, before it is ready
    starting = [
        i for i, m in enumerate(messages) if m.startswith("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=starting: ")
    ]
    assert starting and starting[0] < messages.index("READY=1"), messages[:5]
    assert "loading the engine (litert)" in messages[starting[0]]
    kicks = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(kicks) >= 4, messages
    assert max(b - a for a, b in itertools.pairwise(kicks)) < 1.0  # never late for a 1 s watchdog


def test_edge_kicks_the_watchdog_while_frames_flow(tmp_path):
    got = _run_with_notify(
        tmp_path, "edge", "--backend", "", "--no-fifo", "--fps", "20", "--seconds", "30", seconds=8
    )
    messages = [m for _, m in got]
    assert "READY=1" in messages
    kicks = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(kicks) >= 3, messages
    assert max(b - a for a, b in itertools.pairwise(kicks)) < 1.0


def test_log_lines_carry_journald_priorities_only_under_journald(tmp_path, monkeypatch):
    """Under systemd stderr is the journal's stream (JOURNAL_STREAM=dev:ino): each line starts with
    its syslog priority (so `journalctl -p warning` finds warnings) and has no timestamp of its own."""
    import logging
    import os

    from lalelu.logs import error_line, setup_logging

    with open(tmp_path / "stream", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging(logging.INFO, stream)
        logging.getLogger("lalelu.edge").warning("backend lost (%s)", "reset")
        logging.getLogger("lalelu.edge").info("two\nlines")
        assert error_line("model file /x does not exist", stream).startswith("<3>lalelu: error: ")
        stream.seek(0)
        assert stream.read().splitlines() == [
            "<4>lalelu.edge: backend lost (reset)",
            "<6>lalelu.edge: two",
            "<6>lines",
        ]
    with open(tmp_path / "terminal", "w+") as stream:  # another file: a terminal or a pipe
        setup_logging(logging.INFO, stream)
        logging.getLogger("lalelu.edge").warning("plain")
        stream.seek(0)
        line = stream.read().strip()
        assert line.endswith("lalelu.edge WARNING plain") and line[:4].isdigit(), line
        assert not error_line("x", stream).startswith("<")
    logging.basicConfig(force=True)


def test_a_long_start_keeps_saying_it_is_alive(tmp_path, monkeypatch):
    """sdnotify.StartingUp: every period systemd hears EXTEND_TIMEOUT_USEC with the phase, and the
    heartbeat file is fresh; once started the file is gone."""
    from lalelu.runtime.sdnotify import StartingUp

    path = tmp_path / "notify.sock"
    heartbeat = tmp_path / "backend.json.starting"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.1)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with StartingUp("loading", heartbeat, every_s=0.2, extend_s=3) as starting:
            starting.phase = "compiling"
            got = _collect(sock, 1.0)
            assert heartbeat.read_text().startswith("compiling (")
        assert not heartbeat.exists()
    messages = [m for _, m in got]
    assert len(messages) >= 3, messages
    assert all(m.startswith("EXTEND_TIMEOUT_USEC=3000000\nSTATUS=starting: ") for m in messages)
    assert "STATUS=starting: compiling (" in messages[-1]


def test_the_demo_waits_for_a_backend_that_says_it_is_still_starting(tmp_path):
    """A start longer than the demo's wait is waited for while its heartbeat is fresh; a silent one is not."""
    import sys

    from lalelu.cli.demo import wait_until_ready
    from lalelu.errors import LaleluError

    ready = tmp_path / "backend.json"
    slow = (  # 3 s of start-up with a heartbeat every 0.3 s, then ready
        "import json, pathlib, sys, time; hb = pathlib.Path(sys.argv[1] + '.starting')\n"
        "for i in range(10):\n    hb.write_text(f'compiling ({i} s)'); time.sleep(0.3)\n"
        "pathlib.Path(sys.argv[1]).write_text(json.dumps({'port': 7600}))\ntime.sleep(30)"
    )
    gap = (  # beats, then none for 1.5 s (loading ended, the server opens), then ready
        "import json, pathlib, sys, time; hb = pathlib.Path(sys.argv[1] + '.starting')\n"
        "for i in range(4):\n    hb.write_text('compiling'); time.sleep(0.3)\n"
        "hb.unlink(); time.sleep(1.5); pathlib.Path(sys.argv[1]).write_text(json.dumps({'port': 1}))\n"
        "time.sleep(30)"
    )
    for script, timeout_s, stale_s, port in ((slow, 1.0, 1.0, 7600), (gap, 0.5, 3.0, 1)):
        proc = subprocess.Popen([sys.executable, "-c", script, str(ready)])
        try:
            got = wait_until_ready(proc, ready, timeout_s=timeout_s, quiet=True, stale_s=stale_s)
            assert got == {"port": port}
        finally:
            proc.kill()
            proc.wait()
        ready.unlink()
        (tmp_path / "backend.json.starting").unlink(missing_ok=True)
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        try:
            wait_until_ready(silent, ready, timeout_s=1.0, quiet=True, stale_s=1.0)
        except LaleluError as exc:
            assert "not ready within" in str(exc)
        else:
            raise AssertionError("a backend that never got ready was waited for as if it had")
        assert time.monotonic() - t0 < 10
    finally:
        silent.kill()
        silent.wait()


def test_a_start_that_never_ends_stops_asking_for_time(tmp_path, monkeypatch):
    """After limit_s the beats stop, so the unit's start timeout ends a start that hangs."""
    from lalelu.runtime.sdnotify import StartingUp

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.1)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with StartingUp("compiling", every_s=0.1, extend_s=1, limit_s=0.35):
            got = [m for _, m in _collect(sock, 1.2)]
    assert got[-1] == "STATUS=starting: compiling: still not started after 0 s", got
    assert 2 <= sum(m.startswith("EXTEND_TIMEOUT_USEC=") for m in got) <= 5, got
