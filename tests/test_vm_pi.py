"""`ansible-playbook site.yml` against a booted "Pi": a freshly imaged arm64 Debian VM reached over real
SSH as the Imager's sudo user, with its outbound network cut (provisioned together with the "GPU PC" of
tests/test_vm_rig.py, by one run: the `rig` fixture). After provisioning and the reboot the live system
is asked whether it plays; then its service is killed, hung, and its power cut.

Slow (emulated machines on this one's two CPUs); `pytest -m "not vm"` leaves it out. Figures: `pytest -s`.
"""

from __future__ import annotations

import os
import re
import time

import pytest
import vm as vmlib
from support import wait_until
from vm import FIGURES, edge_state, exposure, hits, journal, main_pid, restarted_and_playing

UNIT = "lalelu-edge"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(vmlib.missing_tools()),
        reason=f"needs root and {vmlib.missing_tools() or 'QEMU'} (tools/test installs them; CI runs as root)",
    ),
]


def edge_story(rig) -> str:
    """What the edge and the backend logged and the edge's state: a failed wait's evidence."""
    return (
        f"edge state: {edge_state(rig.pi)}\n"
        f"edge journal (tail):\n{journal(rig.pi, f'-u {UNIT} -n 60')}\n"
        f"backend journal (tail):\n{journal(rig.pc, '-u lalelu-backend -n 30')}"
    )


def test_first_run_rebooted_once_into_the_new_kernel_line(rig):
    pi = rig.pi
    assert "Reboot once for the new boot settings" in rig.first_run.stdout
    assert len(pi.boots) == 2, [b.cmdline for b in pi.boots]  # the harness followed the guest's reboot
    line = pi.ssh("cat /proc/cmdline").stdout.split()
    assert "isolcpus=3" in line and "nohz_full=3" in line and "irqaffinity=0,1,2" in line, line
    assert pi.ssh("cat /boot/firmware/cmdline.txt").stdout.split() == line  # what the "firmware" booted
    assert pi.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == "3"


def test_the_edge_plays_pinned_and_real_time(rig):
    pi = rig.pi
    pid = wait_until(f"{UNIT} active", lambda: main_pid(pi, UNIT), 300, every_s=1)
    assert pi.ssh(f"taskset -pc {pid}").stdout.split(":")[-1].strip() == "3"
    assert pi.ssh(f"ps -o cls=,rtprio= -p {pid}").stdout.split() == ["FF", "60"]  # [edge] fifo_priority
    assert pi.ssh(f"ps -o user= -p {pid}").stdout.strip() == "lalelu"
    # Hardened (below 5: OK) and still real-time, with its locked-memory limit
    assert exposure(pi, UNIT) < 5.0
    assert "unlimited" in pi.ssh(f"sudo grep 'Max locked memory' /proc/{pid}/limits").stdout
    # the first hits after provisioning: 89-239 s in earlier runs, over 300 s in one (poses every ~3 s of a
    # 40-s nod on the emulated rig); the wait is generous, the assertion is that hits come
    wait_until(
        "hits in the edge's journal", lambda: hits(pi) >= 2, 600, every_s=5, context=lambda: edge_story(rig)
    )
    # the login user still logs in and may sudo (the service's user is another account)
    assert pi.ssh("id -un && sudo -n true && echo sudo-ok").stdout.split() == ["pi", "sudo-ok"]


def test_check_says_go_for_isolation_and_the_service(rig):
    pi = rig.pi
    wait_until(
        "the edge's state",
        lambda: pi.ssh("test -s /run/lalelu/edge-state.json", check=False).returncode == 0,
        60,
        every_s=1,
    )
    r = pi.ssh(
        "sudo /opt/lalelu/venv/bin/lalelu check --config /etc/lalelu/edge.toml --max-p99-ms 10000",
        check=False,
    )
    rows = {line[7:].split("  ")[0].strip(): line[:6].strip() for line in r.stdout.splitlines()[:-1]}
    assert rows.get("isolated CPUs") == "go" and rows.get("service") == "go", r.stdout + r.stderr


def test_the_venv_keeps_the_system_numpy(rig):
    """bookworm's numpy 1.24 from Debian, and a Debian extension module built against numpy 1.x
    (python3-bottleneck, as picamera2's simplejpeg is) imports inside the provisioned venv."""
    pi = rig.pi
    code = "import numpy, bottleneck, cv2, ai_edge_litert; print(numpy.__version__, numpy.__file__, bottleneck.nanmax(numpy.arange(3.0)))"
    out = pi.ssh(f"/opt/lalelu/venv/bin/python -c '{code}'").stdout.split()
    assert out[0].startswith("1.24") and out[1].startswith("/usr/lib/python3/dist-packages/"), out
    assert out[2] == "2.0"
    assert (
        pi.ssh("ls /opt/lalelu/venv/lib/python3.11/site-packages | grep -ci '^numpy' || true").stdout.strip()
        == "0"
    )


def test_journal_conventions_and_reload(rig):
    pi = rig.pi
    lines = journal(pi, f"-t {UNIT}").splitlines()
    assert any("hit nod" in ln for ln in lines)  # SyslogIdentifier
    assert not [ln for ln in lines if re.match(r"\d{4}-\d\d-\d\d", ln)], lines[:5]  # no second timestamp
    assert "hit nod" not in journal(pi, f"-u {UNIT} -p warning")
    # an error of the app reaches the journal as an error (priority 3)
    pi.ssh(
        "sudo systemd-run --wait --quiet -u lalelu-logtest /opt/lalelu/venv/bin/lalelu edge --config /nope.toml",
        check=False,
    )
    errors = journal(pi, "-u lalelu-logtest -p err")
    assert "lalelu: error: " in errors and "/nope.toml" in errors, errors
    pid = main_pid(pi, UNIT)
    pi.ssh(f"sudo systemctl reload {UNIT}")
    wait_until("the mapping reloaded", lambda: "reloaded" in journal(pi, f"_PID={pid}"), 60, every_s=1)
    assert main_pid(pi, UNIT) == pid


def signal_and_recover(pi: vmlib.VM, signal: str, figure: str) -> None:
    pid = main_pid(pi, UNIT)
    t0 = time.monotonic()
    pi.ssh(f"sudo kill -{signal} {pid}")
    ready, playing = restarted_and_playing(pi, pid, t0)
    FIGURES[f"pi_{figure}_to_ready_s"], FIGURES[f"pi_{figure}_to_poses_s"] = (
        round(ready, 1),
        round(playing, 1),
    )


def test_sigkill_restarts_the_edge(rig):
    signal_and_recover(rig.pi, "KILL", "sigkill")


def test_a_hung_edge_is_restarted_by_the_watchdog(rig):
    signal_and_recover(rig.pi, "STOP", "sigstop")  # alive but silent: only the watchdog can tell
    assert "Watchdog timeout" in journal(rig.pi, f"-u {UNIT}")


def test_power_cut_comes_back_playing_with_nothing_typed(rig):
    pi = rig.pi
    pi.power_cut()
    t0 = time.monotonic()
    FIGURES["pi_power_on_to_ssh_s"] = round(pi.start(), 1)
    ready, playing = restarted_and_playing(pi, 0, t0, timeout=400)
    FIGURES["pi_power_on_to_ready_s"], FIGURES["pi_power_on_to_first_hit_s"] = (
        round(ready, 1),
        round(playing, 1),
    )
    assert pi.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == "3"
