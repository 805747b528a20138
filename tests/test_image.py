"""The SD-card image (issue #28): `ansible-playbook image.yml -e base=... -e host=...` builds an edge's card
from a Raspberry Pi OS image offline, through the chroot connection and qemu-user, and the card plays.

The base is the stand-in for Raspberry Pi OS Lite that tests/vm.py builds (`raspios_standin`: the Pi VM's
Debian arm64 root on Raspberry Pi OS's layout, MBR, FAT32 boot partition, root by PARTUUID, a first user
without a key, SSH off, no host keys). Two images are built from it, the default one and one with the
read-only root, and each is written to a fresh virtual disk and booted as tests/vm.py boots a Pi (the
kernel, initramfs and kernel line off the FAT partition), with its outbound network cut: nothing is typed
on it and no SSH provisioning runs. The default image is also checked by `fab check` over an inventory.

Slow (an emulated Pi's programs under qemu-user while building, a booted one after); `pytest -m "not vm"`
leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import vm as vmlib
from support import wait_until
from vm import FIGURES, VM_EDGE_CONFIG, VM_MAPPING_TEXT, edge_state, hits, journal, restarted_and_playing

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UNIT = "lalelu-edge"
HOST = "pi-card"
ISO = 3  # group_vars/edge.yml's core, on the Pi's 4

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(vmlib.missing_tools()) or bool(vmlib.missing_image_tools()),
        reason=f"needs root and {vmlib.missing_tools() + vmlib.missing_image_tools() or 'QEMU'} "
        "(tools/test installs them; CI runs as root)",
    ),
]


def build(tmp: Path, name: str, **host_vars: object) -> tuple[Path, subprocess.CompletedProcess, float]:
    """image.yml for one edge of a fresh inventory (the VM's edge: the still photo, local inference, the
    slow nod's mapping, which the build copies in as a user's own file). Returns the images folder."""
    out = tmp / name
    out.mkdir(parents=True, exist_ok=True)
    mapping = out / "slow-nod.toml"
    mapping.write_text(VM_MAPPING_TEXT)
    config = json.loads(json.dumps(VM_EDGE_CONFIG))
    config["output"]["mapping"] = "/etc/lalelu/mappings/slow-nod.toml"
    edge = {
        "ansible_host": "192.0.2.20",  # the card's address once it plays: image.yml never connects to it
        "ansible_user": "pi",
        "ansible_ssh_private_key_file": str(vmlib.ssh_key()),  # its .pub is the card's authorized key
        "pi_camera_install_packages": False,  # python3-picamera2: Raspberry Pi's own repository
        "lalelu_app_config": config,
        "lalelu_app_watchdog_s": 30,  # emulated, a frame takes seconds
        "lalelu_app_mappings": [str(mapping)],
        "lalelu_link_key": "image-test-link-key-5b1e77c2",  # listed by name only in the manifest
        "imager_settings_timezone": "Europe/Berlin",
        "imager_settings_locale": "de_DE.UTF-8",
        **host_vars,
    }
    inventory = out / "hosts.yml"
    inventory.write_text(
        json.dumps({"all": {"children": {"edge": {"hosts": {HOST: edge}}, "backend": {"hosts": {}}}}})
    )
    r, took = vmlib.playbook(
        inventory,
        "-e",
        f"base={vmlib.raspios_standin()}",
        "-e",
        f"host={HOST}",
        "-e",
        f"sd_image_dir={out / 'images'}",
        "-e",
        "sd_image_xz_level=0",  # speed over size here
        "-e",
        f"sd_image_base_dir={tmp / 'bases'}",  # both builds' one unpacked base
        book="image.yml",
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    return out / "images", r, took


def card(images: Path, workdir: Path) -> vmlib.VM:
    """The image written to a fresh card 1 GiB larger than the image (the OS grows into it by itself);
    a card written before and never booted is taken as it is."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "card.img"
    if not disk.exists():
        with open(disk.with_suffix(".tmp"), "wb") as fh:
            subprocess.run(["xz", "-dc", str(images / f"{HOST}.img.xz")], stdout=fh, check=True, timeout=600)
        os.truncate(fh.name, Path(fh.name).stat().st_size + (1 << 30))
        disk.with_suffix(".tmp").rename(disk)
    return vmlib.VM("card", disk, workdir)


def root_partition_sha256(disk: Path) -> str:
    start, size = vmlib.partitions(disk)[1]
    h = hashlib.sha256()
    with open(disk, "rb") as fh:
        fh.seek(start)
        left = size
        while left:
            block = fh.read(min(left, 8 << 20))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def playing(pi: vmlib.VM, timeout: float = 600) -> float:
    """Seconds until the running edge has had poses and played a hit (its journal), from now."""
    t0 = time.monotonic()
    wait_until(
        "a hit in the edge's journal",
        lambda: hits(pi) > 0,
        timeout,
        every_s=5,
        context=lambda: f"state {edge_state(pi)}\n{journal(pi, f'-u {UNIT} -n 40')}",
    )
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def default_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    images, r, took = build(tmp, "default")
    FIGURES["image_build_s"] = round(took, 1)
    return tmp, images, r


@pytest.fixture(scope="module")
def readonly_image(default_image):
    tmp = default_image[0]
    images, r, took = build(tmp, "readonly", readonly_root_enabled=True)
    FIGURES["image_build_readonly_s"] = round(took, 1)
    return tmp, images, r


def test_the_image_says_what_it_is_and_holds_the_edge(default_image):
    tmp, images, r = default_image
    image = images / f"{HOST}.img.xz"
    line = (images / f"{HOST}.img.xz.sha256").read_text().split()
    assert line == [hashlib.sha256(image.read_bytes()).hexdigest(), image.name]
    manifest = json.loads((images / f"{HOST}.manifest.json").read_text())
    base = vmlib.raspios_standin()
    assert manifest["base"] == {"file": base.name, "sha256": hashlib.sha256(base.read_bytes()).hexdigest()}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert manifest["project"]["commit"] == head.stdout.strip()
    assert manifest["inventory"]["imager_settings_timezone"] == "Europe/Berlin"
    assert manifest["inventory"]["lalelu_app_config"]["camera"]["source"] == "still"
    assert "lalelu_link_key" in manifest["inventory_secrets"]
    assert "image-test-link-key" not in json.dumps(manifest) + r.stdout  # a secret is named, never shown
    assert manifest["python_packages"]["lalelu-drums"] and manifest["python_packages"]["ai-edge-litert"]
    assert manifest["debian_packages"]["python3:arm64"]
    assert manifest["files"]["count"] > 10000 and len(manifest["files"]["sha256"]) == 64

    disk = card(images, tmp / "default" / "vm").disk  # written, not booted: the next test boots it
    boot = vmlib.partitions(disk)[0][0]
    # the kernel line exactly as site.yml makes it on a live Pi: every token of the base's kept, once, and
    # the isolation of group_vars/edge.yml's core 3 of the Pi's 4 (not the controller's CPUs)
    line = vmlib.fat_read(disk, boot, "cmdline.txt").decode()
    assert line.endswith("\n") and line.count("\n") == 1
    tokens = line.split()
    base_line = f"console=ttyAMA0,115200 console=tty1 root=PARTUUID={vmlib.STANDIN_DISK_ID}-02"
    for token in [*base_line.split(), "rootfstype=ext4", "fsck.repair=yes", "rootwait"]:
        assert tokens.count(token) == 1, (token, line)
    for param in (f"isolcpus={ISO}", f"nohz_full={ISO}", f"rcu_nocbs={ISO}", "irqaffinity=0,1,2"):
        assert tokens.count(param) == 1, (param, line)
    for name, text in vmlib.STANDIN_FIRMWARE_EXTRA.items():  # a folder, a hidden file, a space: all back
        assert vmlib.fat_read(disk, boot, name).decode() == text, name
    config = vmlib.fat_read(disk, boot, "config.txt").decode()
    assert (
        "camera_auto_detect=1" in config and "dtoverlay=disable-bt" in config and "dtparam=audio=on" in config
    )
    files = (images / f"{HOST}.files.txt").read_text()
    assert not re.search(r"^etc/ssh/ssh_host_", files, re.M)  # every card makes its own at first boot
    assert re.search(r"^etc/machine-id\t\d+\t\d+\t0\t0\t\d+\t0\t", files, re.M)  # empty: made at first boot
    assert not re.search(r"^boot/firmware/.*~\t", files, re.M)  # no editor's backups of the base's files
    assert not re.search(r"^usr/sbin/policy-rc\.d\t", files, re.M)
    assert re.search(r"^home/pi/\.ssh/authorized_keys\t", files, re.M)
    # the link key is in the image but neither in the manifest nor as a hash in the list
    assert re.search(r"^etc/lalelu/link\.key\t.*\(not world-readable", files, re.M)
    assert hashlib.sha256(b"image-test-link-key-5b1e77c2\n").hexdigest() not in files
    assert re.search(r"^etc/systemd/system/multi-user\.target\.wants/lalelu-edge\.service\t", files, re.M)


def test_the_image_boots_and_plays_with_nothing_typed(default_image):
    tmp, images, _ = default_image
    pi = card(images, tmp / "default" / "vm")
    try:
        FIGURES["image_boot_to_ssh_s"] = round(pi.start(), 1)  # as pi, with the inventory's key
        assert pi.ssh("hostname").stdout.strip() == HOST
        assert pi.ssh("cat /sys/devices/system/cpu/isolated").stdout.strip() == str(ISO)
        assert pi.ssh("cat /etc/timezone").stdout.strip() == "Europe/Berlin"
        assert pi.ssh("sudo test -s /etc/ssh/ssh_host_ed25519_key && echo made").stdout.strip() == "made"
        assert len(pi.boots) == 1  # no reboot of its own
        FIGURES["image_first_hit_s"] = round(playing(pi), 1)
        r = pi.ssh(
            "sudo lalelu check --config /etc/lalelu/edge.toml --max-p99-ms 10000 --frames 3",
            check=False,
            timeout=300,
        )
        rows = {ln[7:].split("  ")[0].strip(): ln[:6].strip() for ln in r.stdout.splitlines()[:-1]}
        assert rows.get("isolated CPUs") == "go" and rows.get("service") == "go", r.stdout + r.stderr

        inventory = tmp / "default" / "fab.yml"
        inventory.write_text(
            json.dumps({"all": {"children": {"edge": {"hosts": {HOST: pi.inventory_vars()}}}}})
        )
        fab = subprocess.run(
            [
                str(BIN / "fab"),
                "-r",
                str(ROOT),
                "check",
                "--max-p99-ms",
                "30000",
                "--min-fps-ratio",
                "0.5",
                "--frames",
                "3",
                "--inventory",
                str(inventory),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=inventory.parent,
        )
        assert fab.returncode == 0 and fab.stdout.rstrip().splitlines()[-1] == f"{HOST}  READY", (
            fab.stdout + fab.stderr
        )

        pi.power_cut()
        t0 = time.monotonic()
        pi.start()
        FIGURES["image_power_on_to_poses_s"] = round(restarted_and_playing(pi, 0, t0, timeout=400)[1], 1)
    finally:
        pi.stop()
    (tmp / "default" / "vm" / "card.img").unlink()


def test_a_rebuild_reuses_the_base_and_gives_the_same_files(default_image, readonly_image):
    """The read-only image is the same edge with one setting more: every file both images have is the same,
    dated the same, except what the read-only root itself changes; and the second build did not unpack
    the base again."""
    _, default, _ = default_image
    _, readonly, r = readonly_image
    unpack = r.stdout[r.stdout.index("TASK [sd_image : Unpack the base image]") :].split("TASK [")[1]
    assert "ok: [localhost]" in unpack and "changed:" not in unpack, unpack

    def tree(images: Path) -> dict[str, str]:
        lines = (images / f"{HOST}.files.txt").read_text().splitlines()
        return {ln.split("\t", 1)[0]: ln for ln in lines}

    a, b = tree(default), tree(readonly)
    differ = sorted(p for p in a.keys() & b.keys() if a[p] != b[p])
    # what readonly_root changes: the overlay's packages (dpkg's and apt's records, the libraries' cache),
    # the initramfs with its hook (copied to the boot partition with the kernel, by the firmware hook),
    # the kernel line, config.txt's auto_initramfs, fstab's read-only boot; and folders whose entries
    # changed
    expected = re.compile(
        r"^(var/lib/dpkg/|var/lib/apt/extended_states$|etc/ld\.so\.cache$|boot/initrd\.img-"
        r"|boot/firmware/(cmdline\.txt|config\.txt|initramfs8|kernel8\.img)$|etc/fstab$)"
    )
    unexplained = [p for p in differ if not expected.match(p) and a[p].split("\t")[1] != str(0o040000)]
    assert not unexplained, "\n".join(f"{a[p]}\n{b[p]}" for p in unexplained[:20])
    assert len(a.keys() & b.keys()) > 10000


def test_the_readonly_image_boots_into_the_overlay_and_a_power_cut_changes_nothing(readonly_image):
    tmp, images, _ = readonly_image
    pi = card(images, tmp / "readonly" / "vm")
    before = root_partition_sha256(pi.disk)
    try:
        pi.start()
        assert pi.ssh("findmnt -no FSTYPE /").stdout.strip() == "overlay"
        assert len(pi.boots) == 1
        restarted_and_playing(pi, 0, time.monotonic(), timeout=400)
        pi.ssh("sudo touch /var/lib/written-while-playing && sync")  # into the RAM overlay only
        pi.power_cut()
        assert root_partition_sha256(pi.disk) == before
        pi.start()
        assert pi.ssh("test -e /var/lib/written-while-playing", check=False).returncode == 1
        restarted_and_playing(pi, 0, time.monotonic(), timeout=400)
    finally:
        pi.stop()
    (tmp / "readonly" / "vm" / "card.img").unlink()
