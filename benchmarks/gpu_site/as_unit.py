#!/usr/bin/env python3
"""Start a service the way its systemd unit would, where no systemd runs (the lent GPU machine).

    python3 benchmarks/gpu_site/as_unit.py /etc/systemd/system/lalelu-backend.service --ready OUT.json --log OUT.log

Reads the installed unit: ExecStart, User, Environment (with %C = /var/cache), LimitRTPRIO, LimitMEMLOCK
and the Runtime/State/Logs/Cache directories (made, owned by User). The child runs as User with those
limits and a NOTIFY_SOCKET this script listens on, as for Type=notify: the moment READY=1 arrives is the
start time systemd would see, written to --ready with every STATUS= the service sent before it. Then the
script keeps reading (WATCHDOG=1) until the child exits or the script is stopped (SIGTERM, passed on).
Not emulated: the unit's sandboxing (ProtectSystem= and the like) and its restart policy.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def limit(value: str) -> int:
    return resource.RLIM_INFINITY if value == "infinity" else int(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("unit", type=Path)
    ap.add_argument("--ready", type=Path, required=True, help="write {ready_s, status} here at READY=1")
    ap.add_argument("--log", type=Path, required=True, help="the service's stdout and stderr")
    args = ap.parse_args()
    unit = read_unit(args.unit)
    user = pwd.getpwnam(unit["User"][0])
    env = dict(os.environ)
    for assignments in unit.get("Environment", []):
        for item in shlex.split(assignments.replace("%C", "/var/cache")):
            key, value = item.split("=", 1)
            env[key] = value
    for key, base in (
        ("RuntimeDirectory", "/run"),
        ("StateDirectory", "/var/lib"),
        ("LogsDirectory", "/var/log"),
        ("CacheDirectory", "/var/cache"),
    ):
        for name in unit.get(key, []):
            folder = Path(base) / name
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, user.pw_uid, user.pw_gid)
    sock_dir = Path(tempfile.mkdtemp(prefix="notify-"))
    os.chown(sock_dir, user.pw_uid, user.pw_gid)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_dir / "notify"))
    os.chown(sock_dir / "notify", user.pw_uid, user.pw_gid)
    env["NOTIFY_SOCKET"] = str(sock_dir / "notify")
    rtprio = limit(unit.get("LimitRTPRIO", ["0"])[0])
    memlock = limit(unit.get("LimitMEMLOCK", ["65536"])[0])

    refused = []
    for name, which, value in (
        ("LimitRTPRIO", resource.RLIMIT_RTPRIO, rtprio),
        ("LimitMEMLOCK", resource.RLIMIT_MEMLOCK, memlock),
    ):
        try:  # set here, inherited by the child; a sandbox may refuse even root (no CAP_SYS_RESOURCE)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            refused.append(f"{name}: {e}")
            print(f"as_unit: {name} cannot be set here: {e}", file=sys.stderr)

    def as_user() -> None:
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    t0 = time.monotonic()
    with args.log.open("w") as log:
        child = subprocess.Popen(
            shlex.split(unit["ExecStart"][0]),
            env=env,
            preexec_fn=as_user,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    statuses: list[tuple[float, str]] = []
    notify.settimeout(0.5)
    ready = False
    while child.poll() is None:
        try:
            message = notify.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        now = round(time.monotonic() - t0, 3)
        for field in message.splitlines():
            if field.startswith("STATUS="):
                statuses.append((now, field[7:]))
            if field == "READY=1" and not ready:
                ready = True
                args.ready.write_text(
                    json.dumps(
                        {"ready_s": now, "status": statuses, "pid": child.pid, "limits_refused": refused}
                    )
                )
                print(f"as_unit: READY=1 after {now} s", file=sys.stderr, flush=True)
    if not ready:
        args.ready.write_text(json.dumps({"ready_s": None, "exit": child.returncode, "status": statuses}))
    return child.returncode or 0


if __name__ == "__main__":
    raise SystemExit(main())
