"""The whole rig booted: the "GPU PC" VM (x86-64, GRUB) runs the backend, the "Pi" VM (arm64) plays
through it, both provisioned by one `ansible-playbook site.yml` over one inventory (the `rig` fixture,
tests/vm.py); then `fab check`, `fab bench`, `fab status` and `fab logs` against them, and the failure
drills of a show: the backend's power cut and back, the cable between them cut and restored.

The Pi reaches the backend through this machine's loopback only, and both VMs run with their outbound
network cut. Slow; `pytest -m "not vm"` leaves it out. Figures: `pytest -s`.
"""

from __future__ import annotations

import itertools
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
from support import wait_until
from vm import (
    BACKEND_ADDRESS,
    EDGE_SEEN_FROM,
    FIGURES,
    VM_MONITOR_TOKEN,
    edge_state,
    exposure,
    journal,
    main_pid,
)

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(vmlib.missing_tools()) or shutil.which("socat") is None,
        reason=f"needs root, socat and {vmlib.missing_tools() or 'QEMU'} (tools/test installs them)",
    ),
]


def fab(inv: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FAB, "-r", str(ROOT), *args, "--inventory", str(inv)],
        stdin=subprocess.DEVNULL,  # Ansible's inventory reader refuses a non-blocking stdin
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=inv.parent,
    )


def mode(pi: vmlib.VM) -> str:
    return str(edge_state(pi).get("mode", ""))


def backend_frames(pc: vmlib.VM) -> int:
    """The backend's frame counter, from its last summary line in the journal."""
    lines = [
        ln for ln in journal(pc, "-u lalelu-backend").splitlines() if ln.startswith("lalelu.backend: frames ")
    ]
    return int(lines[-1].split()[2]) if lines else 0  # "lalelu.backend: frames N | served ..."


def switch_to_local(pi: vmlib.VM, after_ns: int) -> dict:
    """From the edge's telemetry: the first switch to local inference after `after_ns` (the Pi's
    CLOCK_MONOTONIC): frames lost and the time from the last backend pose to the first local one."""
    rows = [json.loads(x) for x in pi.ssh("sudo cat /run/lalelu/telemetry.jsonl").stdout.splitlines() if x]
    # The frames in flight when the link broke are never answered, so the last backend pose can come
    # from before `after_ns`; so can the first local frame's capture (the emulated edge holds a frame
    # while it waits for a free slot, and infers that one locally): its pose comes after the cut.
    for prev, row in itertools.pairwise(rows):
        if row["pose_ns"] >= after_ns and row.get("local") and not prev.get("local"):
            return {
                "gap_ms": round((row["pose_ns"] - prev["pose_ns"]) / 1e6, 1),
                "frames_lost": row["seq"] - prev["seq"] - 1,
            }
    # No switch in the rows: say why, for the closing note (was the edge restarted instead?).
    restarts = pi.ssh("systemctl show -p NRestarts --value lalelu-edge").stdout.strip()
    warnings = journal(pi, "-u lalelu-edge -p warning -n 8").splitlines()
    return {"no_switch_in_rows": len(rows), "edge_restarts": restarts, "last_warnings": warnings}


def pi_clock_ns(pi: vmlib.VM) -> int:
    return int(pi.ssh("python3 -c 'import time; print(time.monotonic_ns())'").stdout)


def test_the_pc_booted_its_new_kernel_line_through_grub(rig):
    pc = rig.pc
    assert len(pc.boots) == 2
    line = pc.ssh("cat /proc/cmdline").stdout.split()
    assert line[0].startswith("BOOT_IMAGE=") and "isolcpus=3" in line and "irqaffinity=0,1,2" in line, line
    assert pc.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == "3"
    assert "isolcpus=3" in pc.ssh("cat /etc/default/grub.d/90-lalelu-rt.cfg").stdout


def test_the_backend_serves_only_the_inventorys_edge_pinned_and_real_time(rig):
    pc = rig.pc
    pid = wait_until("lalelu-backend active", lambda: main_pid(pc, "lalelu-backend"), 300, every_s=1)
    assert pc.ssh(f"taskset -pc {pid}").stdout.split(":")[-1].strip() == "3"
    assert pc.ssh(f"ps -o cls= -p {pid}").stdout.strip() == "FF"
    assert exposure(pc, "lalelu-backend.service") < 5.0  # hardened, and real-time all the same
    assert "0.0.0.0:7600" in pc.ssh("ss -ltn").stdout
    assert f'allow = ["{EDGE_SEEN_FROM}"]' in pc.ssh("sudo cat /etc/lalelu/backend.toml").stdout


def test_the_pc_without_a_gpu_gets_the_cpu_engine_and_is_told_so(rig):
    # site.yml found no NVIDIA GPU on the VM's PCI bus: no GPU stack installed, LiteRT, and one line saying so
    assert re.search(r"no\s+NVIDIA\s+GPU\s+on\s+the\s+PCI\s+bus", rig.first_run.stdout)
    venv = rig.pc.ssh("ls /opt/lalelu/venv/lib/python3.11/site-packages").stdout
    assert "torch" not in venv.split() and "onnx" not in venv.split()
    assert (
        "engine auto: litert on the CPU" in rig.pc.ssh("sudo journalctl -u lalelu-backend --no-pager").stdout
    )


def test_ssh_takes_keys_only(rig):
    for vm in (rig.pi, rig.pc):  # both log in with a key: password login is off
        settings = vm.ssh("sudo sshd -T").stdout.lower().splitlines()
        assert "passwordauthentication no" in settings and "kbdinteractiveauthentication no" in settings


def test_the_edge_plays_through_the_backend(rig):
    pi, pc = rig.pi, rig.pc
    state = wait_until(
        "the edge on the backend",
        lambda: (s := edge_state(pi)).get("mode") == "remote" and s,
        300,
        every_s=1,
    )
    assert state["backend"] == f"{BACKEND_ADDRESS}:7600"
    before = backend_frames(pc)
    wait_until("the backend's counters growing", lambda: backend_frames(pc) > before, 120, every_s=1)
    poses = state["poses"]
    wait_until("the edge's poses growing", lambda: edge_state(pi).get("poses", 0) > poses, 120, every_s=1)
    # Over the link key the inventory gave both (a file of the app's group only).
    assert "link key proven" in journal(pc, "-u lalelu-backend")
    assert pc.ssh("sudo stat -c %a:%U:%G /etc/lalelu/link.key").stdout.strip() == "640:root:lalelu"


def test_fab_over_the_inventory(rig):
    inv = rig.inventory
    wait_until("the edge on the backend", lambda: mode(rig.pi) == "remote", 300, every_s=1)
    # emulated machines (TCG, 8 vCPUs on 2 cores): seconds per frame, and the Pi's own check takes CPU
    # from its edge while it runs; what is tested here is the wiring, not the speed
    r = fab(inv, "check", "--max-p99-ms", "30000", "--min-fps-ratio", "0.5", "--frames", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-2:] == ["pi-vm  READY", "pc-vm  READY"], r.stdout
    assert f"go     inference      on the backend {BACKEND_ADDRESS}:7600" in r.stdout
    # the backend's own line: the edges it serves and its batches (LiteRT on the PC VM: one frame a call)
    assert re.search(
        r"^(go|warn)\s+band\s+(1 edge\(s\): \S+ \d+ fps; |no edge sent frames)", r.stdout, re.M
    ), r.stdout
    assert (
        f"monitor page: http://127.0.0.1:8700/?token={VM_MONITOR_TOKEN}" in r.stdout
    )  # the Pi's ansible_host
    assert '"0.0.0.0"' in rig.pi.ssh("sudo grep -A1 '^\\[monitor\\]' /etc/lalelu/edge.toml").stdout
    # a sound check without playing: one note through the Pi's output (its next pose plays it)
    r = fab(inv, "play-test", "--wait", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pi-vm: test note played: note 36 velocity 100 on channel 10 through LogOutput" in r.stdout, (
        r.stdout
    )
    results = inv.parent / "results"
    r = fab(
        inv,
        "bench",
        "--group",
        "all",
        "--configs",
        "plain,pinned",
        "--threads",
        "1",
        "--count",
        "5",
        "--warmup",
        "1",
        "--cpu",
        "3",
        "--results",
        str(results),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    table = r.stdout.split("live, as each service reports it:")[0]  # the live lines start with the host too
    rows = sorted(ln.split()[0:4:3] for ln in table.splitlines() if ln.startswith(("pi-vm ", "pc-vm ")))
    assert rows == [["pc-vm", "pinned"], ["pc-vm", "plain"], ["pi-vm", "pinned"], ["pi-vm", "plain"]], (
        r.stdout
    )
    # then each service's live figures: the Pi's mode and latency, the PC's edges and frames per engine call
    assert re.search(r"^pi-vm\s+(remote|local[^:]*): [\d.]+ fps, latency p50", r.stdout, re.M), r.stdout
    assert re.search(
        r"^pc-vm\s+\d edge\(s\): .*frames per engine call mean [\d.]+, up to \d+ \(of 1\); served p50",
        r.stdout,
        re.M,
    ), r.stdout
    FIGURES["fab_bench"] = r.stdout[r.stdout.index("host") :].splitlines()[:5]
    r = fab(inv, "status")
    assert r.returncode == 0 and r.stdout.count("isolated     3") == 2, r.stdout
    assert "service      active" in r.stdout, r.stdout
    r = fab(inv, "logs", "--lines", "30")
    assert (
        r.returncode == 0 and "lalelu.edge: frames " in r.stdout and "lalelu.backend: frames " in r.stdout
    ), r.stdout[-3000:]


def test_a_stopped_backend_is_not_ready_and_the_edge_plays_locally(rig):
    pi, pc, inv = rig.pi, rig.pc, rig.inventory
    pc.ssh("sudo systemctl stop lalelu-backend")
    wait_until("the edge local", lambda: mode(pi).startswith("local"), 120, every_s=1)
    # emulated machines (TCG, 8 vCPUs on 2 cores): seconds per frame, and the Pi's own check takes CPU
    # from its edge while it runs; what is tested here is the wiring, not the speed
    r = fab(inv, "check", "--max-p99-ms", "30000", "--min-fps-ratio", "0.5", "--frames", "5")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pc-vm  NOT READY" in r.stdout and "pi-vm  READY" in r.stdout, r.stdout
    assert (
        f"warn   inference      local, reconnecting: the backend {BACKEND_ADDRESS}:7600 does not answer"
        in r.stdout
    )
    pc.ssh("sudo systemctl start lalelu-backend")
    wait_until("the edge back on the backend", lambda: mode(pi) == "remote", 180, every_s=1)


def test_drill_backend_powered_off_mid_show_and_back(rig):
    pi, pc = rig.pi, rig.pc
    t = pi_clock_ns(pi)
    pc.power_cut()
    wait_until("the edge local", lambda: mode(pi).startswith("local"), 120, every_s=1)
    poses = edge_state(pi).get("poses", 0)
    wait_until(
        "poses while the backend is off", lambda: edge_state(pi).get("poses", 0) > poses, 180, every_s=1
    )
    FIGURES["drill_backend_power_cut"] = switch_to_local(pi, t)
    t0 = time.monotonic()
    pc.start()
    wait_until("the edge back on the backend", lambda: mode(pi) == "remote", 400, every_s=1)
    FIGURES["drill_backend_power_on_to_edge_remote_s"] = round(time.monotonic() - t0, 1)


def test_drill_cable_cut_and_restored(rig):
    pi = rig.pi
    wait_until("the edge on the backend", lambda: mode(pi) == "remote", 120, every_s=1)
    t = pi_clock_ns(pi)
    rig.cable.cut()
    wait_until("the edge local", lambda: mode(pi).startswith("local"), 120, every_s=1)
    FIGURES["drill_cable_cut"] = switch_to_local(pi, t)
    t0 = time.monotonic()
    rig.cable.restore()
    wait_until("the edge back on the backend", lambda: mode(pi) == "remote", 120, every_s=1)
    FIGURES["drill_cable_restored_to_edge_remote_s"] = round(time.monotonic() - t0, 1)
    assert "answers again" in journal(pi, "-u lalelu-edge")
