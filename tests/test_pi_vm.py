"""`ansible-playbook site.yml` against a booted "Pi": a freshly imaged arm64 Debian VM reached over real
SSH as the Imager's sudo user, with its outbound network cut. After provisioning and the reboot the live
system is asked whether it plays, then the service is killed, hung and the power is cut.

Slow (an emulated arm64 machine on this one's CPUs: ~15 min with a cached image, ~15 more to build
it); `pytest -m "not vm"` leaves it out. Figures are printed with `pytest -s`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vm as vmlib

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
UNIT = "lalelu-edge"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(vmlib.missing_tools()),
        reason=f"needs root and {vmlib.missing_tools() or 'QEMU'} (tools/test installs them; CI runs as root)",
    ),
]

# The VM's edge: the still photo instead of the Pi camera (the only change from group_vars/edge.yml
# besides the packages of the Pi's own repository), slow enough for emulated inference (~0.3 s a frame).
VM_EDGE_CONFIG = {
    "engine": {"kind": "litert", "threads": 1, "warmup": 3},
    "camera": {
        "source": "still",
        "width": 320,
        "height": 240,
        "fps": 4,
        "pixel_format": "yuv420",
        "still_period_s": 2.0,
        "still_amplitude": 0.3,
    },
    "edge": {
        "backend": "{{ lalelu_edge_backend }}",
        "cpus": [3],
        "sched_fifo": True,
        "summary_interval_s": 5,
    },
    "output": {"kind": "log", "where": "edge", "mapping": "demo-nod"},
}
FIGURES: dict[str, object] = {}


def inventory(tmp: Path, pi: vmlib.VM) -> Path:
    host = dict(
        pi.inventory_vars(),
        pi_camera_install_packages=False,  # python3-picamera2 and rpicam-apps: the Pi's own repository
        pi_camera_check=False,  # no camera in a VM
        lalelu_app_config=VM_EDGE_CONFIG,
    )
    # as inventory/hosts.yml: reboots allowed (the isolated CPU needs one)
    inv = {
        "all": {
            "vars": {"rt_tuning_allow_reboot": True},
            "children": {"edge": {"hosts": {"pi-vm": host}}, "backend": {"hosts": {}}},
        }
    }
    path = tmp / "hosts.yml"
    path.write_text(json.dumps(inv))  # JSON is YAML
    return path


def playbook(inv: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Exactly the README's command (`cd ansible && ansible-playbook site.yml`), with the VM's inventory."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", PATH=f"{BIN}:{os.environ['PATH']}")
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), "site.yml", *args],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return r, time.monotonic() - t0


def recap(output: str) -> dict[str, dict[str, int]]:
    found = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        found[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
    return found


def main_pid(pi: vmlib.VM) -> tuple[int, str]:
    out = pi.ssh(f"systemctl show -p MainPID -p ActiveState --value {UNIT}").stdout.split()
    return int(out[0]), out[1]


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def hits(pi: vmlib.VM, match: str = f"-u {UNIT}") -> int:
    r = pi.ssh(f"journalctl -b --no-pager -o cat {match}", check=False)
    return r.stdout.count("hit nod")


def restarted_and_playing(pi: vmlib.VM, old_pid: int, t0: float, timeout: float = 240) -> tuple[float, float]:
    """Seconds from t0 until the unit runs again with a new pid (READY=1), and until its first new hit."""

    def active():
        pid, state = main_pid(pi)
        return pid if pid and pid != old_pid and state == "active" else 0

    pid = wait_for(f"{UNIT} active again", active, timeout)
    ready = time.monotonic() - t0
    wait_for(f"a hit from the new {UNIT} (pid {pid})", lambda: hits(pi, f"_PID={pid}") > 0, timeout)
    return ready, time.monotonic() - t0


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pi-vm")
    t0 = time.monotonic()
    vmlib.pi_image()
    FIGURES["image_ready_s"] = round(time.monotonic() - t0, 1)
    pi = vmlib.fresh_pi(tmp)
    try:
        FIGURES["first_boot_to_ssh_s"] = round(pi.start(), 1)
        inv = inventory(tmp, pi)
        first, t_first = playbook(inv)
        FIGURES["first_run_s"] = round(t_first, 1)
        assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
        yield pi, inv, first
    finally:
        pi.stop()
        print(f"\nPi VM figures: {json.dumps(FIGURES)}")
        if os.environ.get("LALELU_KEEP_VM") is None:
            shutil.rmtree(tmp, ignore_errors=True)  # the test's copy of the image (the cache stays)


def test_first_run_rebooted_into_the_new_kernel_line(provisioned):
    pi, _, first = provisioned
    assert "Reboot for new boot parameters" in first.stdout
    assert len(pi.boots) == 2, [b.cmdline for b in pi.boots]  # the harness followed the guest's reboot
    line = pi.ssh("cat /proc/cmdline").stdout.split()
    assert "isolcpus=3" in line and "nohz_full=3" in line and "irqaffinity=0,1,2" in line, line
    assert pi.ssh("cat /boot/firmware/cmdline.txt").stdout.split() == line  # what the firmware booted
    assert pi.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == "3"
    FIGURES["reboot_to_ssh_s"] = pi.boots[-1].ssh_after_s


def test_the_edge_plays_pinned_and_real_time(provisioned):
    pi, _, _ = provisioned
    pid = wait_for(f"{UNIT} active", lambda: main_pid(pi)[0] if main_pid(pi)[1] == "active" else 0, 300)
    assert pi.ssh(f"taskset -pc {pid}").stdout.split(":")[-1].strip() == "3"
    assert pi.ssh(f"ps -o cls=,rtprio= -p {pid}").stdout.split() == ["FF", "50"]
    assert pi.ssh(f"ps -o user= -p {pid}").stdout.strip() == "lalelu"
    wait_for("hits in the edge's journal", lambda: hits(pi) >= 2, 240)
    # the login user still logs in and may sudo (the service user is another account)
    assert pi.ssh("id -un && sudo -n true && echo sudo-ok").stdout.split() == ["pi", "sudo-ok"]


def test_check_says_go_for_isolation_and_the_service(provisioned):
    pi, _, _ = provisioned
    wait_for(
        "the edge's state file",
        lambda: pi.ssh("test -s /run/lalelu/edge-state.json", check=False).returncode == 0,
        60,
    )
    r = pi.ssh(
        "sudo /opt/lalelu/venv/bin/lalelu check --config /etc/lalelu/edge.toml --max-p99-ms 5000",
        check=False,
    )
    rows = {line[7:].split("  ")[0].strip(): line[:6].strip() for line in r.stdout.splitlines()[:-1]}
    assert rows.get("isolated CPUs") == "go" and rows.get("service") == "go", r.stdout + r.stderr
    assert rows.get("inference") == "go", r.stdout  # local: this inventory has no backend


def test_the_venv_keeps_the_system_numpy(provisioned):
    """bookworm's numpy 1.24 from Debian, and a Debian extension module built against numpy 1.x
    (python3-bottleneck, as picamera2's simplejpeg is) imports inside the provisioned venv."""
    pi, _, _ = provisioned
    code = "import numpy, bottleneck, cv2, ai_edge_litert; print(numpy.__version__, numpy.__file__, bottleneck.nanmax(numpy.arange(3.0)))"
    out = pi.ssh(f"/opt/lalelu/venv/bin/python -c '{code}'").stdout.split()
    assert out[0].startswith("1.24") and out[1].startswith("/usr/lib/python3/dist-packages/"), out
    assert out[2] == "2.0"
    assert (
        pi.ssh("ls /opt/lalelu/venv/lib/python3.11/site-packages | grep -ci '^numpy' || true").stdout.strip()
        == "0"
    )


def test_bench_may_choose_the_isolated_cpu(provisioned):
    pi, _, _ = provisioned
    r = pi.ssh(
        "/opt/lalelu/venv/bin/lalelu bench --threads 1 --configs pinned --cpu-affinity 3 --warmup 1 --n 3",
        timeout=300,
        check=False,
    )
    assert r.returncode == 0 and "pinned" in r.stdout, r.stdout + r.stderr


def test_journal_conventions_and_reload(provisioned):
    pi, _, _ = provisioned
    lines = pi.ssh(f"journalctl -t {UNIT} -b --no-pager -o cat").stdout.splitlines()
    assert any("hit nod" in ln for ln in lines)  # SyslogIdentifier
    assert not [ln for ln in lines if re.match(r"\d{4}-\d\d-\d\d", ln)], lines[:5]  # no second timestamp
    assert "hit nod" not in pi.ssh(f"journalctl -u {UNIT} -b -p warning --no-pager -o cat").stdout
    # an error from the app reaches the journal as an error (priority 3)
    pi.ssh(
        "sudo systemd-run --wait --quiet -u lalelu-logtest /opt/lalelu/venv/bin/lalelu edge --config /nope.toml",
        check=False,
    )
    errors = pi.ssh("journalctl -u lalelu-logtest -p err --no-pager -o cat").stdout
    assert "lalelu: error: " in errors and "/nope.toml" in errors, errors
    pid, _ = main_pid(pi)
    pi.ssh(f"sudo systemctl reload {UNIT}")
    wait_for(
        "the mapping reloaded",
        lambda: "reloaded" in pi.ssh(f"journalctl _PID={pid} --no-pager -o cat").stdout,
        60,
    )
    assert main_pid(pi) == (pid, "active")


def test_second_run_changes_nothing(provisioned):
    pi, inv, _ = provisioned
    second, t_second = playbook(inv)
    FIGURES["second_run_s"] = round(t_second, 1)
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap(second.stdout)["pi-vm"]["changed"] == 0, second.stdout[-8000:]
    assert len(pi.boots) == 2  # no reboot either


def test_sigkill_restarts_the_edge(provisioned):
    pi, _, _ = provisioned
    pid, _ = main_pid(pi)
    t0 = time.monotonic()
    pi.ssh(f"sudo kill -KILL {pid}")
    ready, playing = restarted_and_playing(pi, pid, t0)
    FIGURES["sigkill_to_ready_s"], FIGURES["sigkill_to_first_hit_s"] = round(ready, 1), round(playing, 1)


def test_a_hung_edge_is_restarted_by_the_watchdog(provisioned):
    pi, _, _ = provisioned
    pid, _ = main_pid(pi)
    t0 = time.monotonic()
    pi.ssh(f"sudo kill -STOP {pid}")
    ready, playing = restarted_and_playing(pi, pid, t0)
    FIGURES["sigstop_to_ready_s"], FIGURES["sigstop_to_first_hit_s"] = round(ready, 1), round(playing, 1)
    assert "Watchdog timeout" in pi.ssh(f"journalctl -u {UNIT} -b --no-pager -o cat").stdout


def test_power_cut_comes_back_playing_with_nothing_typed(provisioned):
    pi, _, _ = provisioned
    pi.power_cut()
    t0 = time.monotonic()
    FIGURES["power_on_to_ssh_s"] = round(pi.start(), 1)
    ready, playing = restarted_and_playing(pi, 0, t0, timeout=400)
    FIGURES["power_on_to_ready_s"], FIGURES["power_on_to_first_hit_s"] = round(ready, 1), round(playing, 1)
    assert pi.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == "3"
