"""Booted Debian VMs that stand in for the rig's machines in the provisioning tests.

The "Pi": Debian bookworm arm64, debootstrapped, on a raw ext4 disk, booted by QEMU (TCG) the way the Pi
firmware boots: the kernel and initrd found on the disk and exactly the line that the disk's
/boot/firmware/cmdline.txt holds at that moment. When the guest reboots, QEMU exits (-no-reboot) and the
harness boots it again the same way, so `ansible.builtin.reboot` works and new boot parameters take effect.
A sudo user `pi` made the way Raspberry Pi Imager makes one (password-less sudo, an SSH key), systemd,
and the Debian packages the roles install are in the image, so the VM runs with its outbound network cut
(`restrict=on`): provisioning must work offline. SSH is forwarded to a loopback port.

Images are built once per machine and cached (LALELU_VM_CACHE, default /var/cache/lalelu-test/vm).
`python tests/vm.py boot` boots one by hand and prints how to log in.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import free_port, wait_until

CACHE = Path(os.environ.get("LALELU_VM_CACHE", "/var/cache/lalelu-test/vm"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
USER = "pi"
# What Raspberry Pi OS brings that the roles rely on, plus a Debian extension module built against
# numpy 1.x (python3-bottleneck) to prove the edge's venv keeps the system numpy.
PI_PACKAGES = [
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "python3-apt",
    "python3-packaging",
    "python3-numpy",
    "python3-bottleneck",
    "iproute2",
    "kmod",
    "procps",
    "ca-certificates",
    "e2fsprogs",
]
# A Raspberry Pi OS cmdline.txt, with the console and root of QEMU's `virt` board (the Pi's own name
# root=PARTUUID=... and console=serial0 mean nothing there)
PI_CMDLINE = "console=ttyAMA0,115200 root=/dev/vda rootfstype=ext4 fsck.repair=yes rootwait"
PI_CONFIG = (
    "# For more options and information see http://rptl.io/configtxt\ndtparam=audio=on\n[cm4]\notg_mode=1\n"
)
IMAGE_SIZE = "6G"
KERNEL = "linux-image-arm64"
# The initramfs holds only what a `virt` board needs to mount its root: Debian's default (MODULES=most)
# runs modinfo on every module, ~20 min under qemu-user.
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "ext4"]
# The "GPU PC": x86-64 on an MBR-partitioned disk that SeaBIOS boots through GRUB; its sudo user
PC_USER = "drummer"
PC_PACKAGES = [
    "linux-image-amd64",
    "grub-pc",
    *[p for p in PI_PACKAGES if p not in ("python3-numpy", "python3-bottleneck")],
]
PC_GRUB = (
    'GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR="Debian"\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
    'GRUB_CMDLINE_LINUX="console=ttyS0,115200"\nGRUB_TERMINAL=serial\n'
)
PARTITION_OFFSET = 1 << 20


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL  # never pytest's own stdin (see VM.ssh)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def missing_tools() -> list[str]:
    tools = [
        "qemu-system-aarch64",
        "qemu-system-x86_64",
        "debootstrap",
        "mkfs.ext4",
        "debugfs",
        "sfdisk",
        "ssh",
        "ssh-keygen",
    ]
    return [t for t in tools if shutil.which(t) is None]


def missing_image_tools() -> list[str]:
    """What the SD-card image's build and its stand-in base need besides the VMs' tools."""
    tools = ["mcopy", "mtype", "mkfs.vfat", "xz", "losetup", "resize2fs"]
    return [t for t in tools if shutil.which(t) is None]


def enable_binfmt() -> None:
    """Let this x86-64 host run arm64 programs (debootstrap's second stage, chroot set-up) through
    qemu-user-static, registered with the fix-binary flag so the chroot needs no copy of it."""
    mnt = Path("/proc/sys/fs/binfmt_misc")
    if not (mnt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(mnt)])
    if not (mnt / "qemu-aarch64").exists():
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if not conf.exists():
            raise RuntimeError("no qemu-aarch64 binfmt rule: apt install qemu-user-static")
        (mnt / "register").write_text(conf.read_text().strip())


def ssh_key() -> Path:
    """The key the tests log in with (the Imager puts the user's public key into the image)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = CACHE / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lalelu-test", "-f", str(key)])
    return key


def _chroot(root: Path, script: str) -> None:
    run(["chroot", str(root), "/bin/sh", "-euc", script], timeout=1200)


def _image_key(*parts: object) -> str:
    import inspect

    text = "\n".join([SUITE, MIRROR, IMAGE_SIZE, inspect.getsource(_configure_root), *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _debootstrap(root: Path, arch: str, packages: list[str], then=None, then_key: str = "") -> None:
    """A Debian root at `root` (and `then(root)` run on it), kept between builds: a change of the set-up
    that follows needs no second debootstrap."""
    done = root / ".lalelu-debootstrapped"
    wanted = f"{arch} {','.join(packages)} {then_key}"
    if done.exists() and done.read_text() == wanted:
        return
    shutil.rmtree(root, ignore_errors=True)
    run(
        [
            "debootstrap",
            f"--arch={arch}",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(root),
            MIRROR,
        ],
        timeout=3600,
    )
    if then is not None:
        then(root)
    done.write_text(wanted)


def _configure_root(root: Path, hostname: str, user: str, fstab: str) -> None:
    """What an installer or the Pi Imager leaves: a host name, a sudo user with the user's SSH key
    (password-less sudo in its own sudoers file), SSH on, DHCP on the wired port."""
    pub = ssh_key().with_suffix(".pub").read_text().strip()
    (root / "etc/hostname").write_text(f"{hostname}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    (root / "etc/fstab").write_text(fstab)
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
    (root / "etc/systemd/network/20-wired.network").write_text(
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
    )
    _chroot(
        root,
        f"id {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}\n"
        f"usermod -aG sudo,adm,video,audio {user}\n"  # as Raspberry Pi OS's first user
        f"echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/010_{user}-nopasswd\n"
        f"chmod 0440 /etc/sudoers.d/010_{user}-nopasswd\n"
        f"install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh\n"
        f"echo '{pub}' > /home/{user}/.ssh/authorized_keys\n"
        f"chown {user}:{user} /home/{user}/.ssh/authorized_keys\n"
        "systemctl enable systemd-networkd ssh\n"
        # apt's timers would take the dpkg lock under the tests at random; the network is cut anyway
        "systemctl mask apt-daily.timer apt-daily-upgrade.timer\n"
        "apt-get clean\n",
    )


def _keep_only(image: Path, pattern: str) -> Path:
    for old in CACHE.glob(pattern):
        if old != image:
            old.unlink()
    return image


def _install_pi_kernel(root: Path) -> None:
    """The kernel after the initramfs settings: Debian's default (MODULES=most) runs modinfo on every
    module, ~20 min under qemu-user, where a `virt` board needs four."""
    conf = root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/lalelu-vm.conf").write_text("MODULES=list\n")
    (conf / "modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    _chroot(root, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {KERNEL}")


def _pi_root() -> Path:
    """The Pi's Debian root (debootstrapped under qemu-user once, kept), set up as the Imager leaves it."""
    enable_binfmt()
    root = CACHE / "pi-root.tmp"
    _debootstrap(root, "arm64", PI_PACKAGES, _install_pi_kernel, f"MODULES=list {INITRAMFS_MODULES} {KERNEL}")
    _configure_root(root, "lalelu-pi", USER, "/dev/vda / ext4 defaults,noatime 0 1\n")
    return root


def pi_image() -> Path:
    """The cached "freshly imaged Pi" disk: arm64, one ext4 file system, the kernel and its line in
    /boot/firmware. Built (debootstrap under qemu-user, ~15 min) when missing or outdated."""
    image = (
        CACHE
        / f"pi-arm64-{SUITE}-{_image_key(PI_PACKAGES, KERNEL, INITRAMFS_MODULES, PI_CMDLINE, PI_CONFIG, USER)}.img"
    )
    if image.exists():
        return image
    root = _pi_root()
    fw = root / "boot/firmware"
    fw.mkdir(parents=True, exist_ok=True)
    (fw / "cmdline.txt").write_text(PI_CMDLINE + "\n")
    (fw / "config.txt").write_text(PI_CONFIG)
    tmp = image.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(root), str(tmp), IMAGE_SIZE], timeout=1200)
    tmp.rename(image)
    return _keep_only(image, "pi-arm64-*.img")


def pc_image() -> Path:
    """The cached "GPU PC" disk: x86-64 on an MBR-partitioned disk with GRUB in its boot sector, as an
    installer leaves it. GRUB is installed by the machine itself, booted once for that."""
    image = CACHE / f"pc-amd64-{SUITE}-{_image_key(PC_PACKAGES, PC_GRUB, PC_USER)}.img"
    if image.exists():
        return image
    root = CACHE / "pc-root.tmp"
    _debootstrap(root, "amd64", PC_PACKAGES)
    (root / "etc/default/grub").write_text(PC_GRUB)
    _configure_root(root, "lalelu-pc", PC_USER, "/dev/vda1 / ext4 defaults,noatime 0 1\n")
    tmp = image.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    size = int(IMAGE_SIZE.removesuffix("G")) << 30
    with open(tmp, "wb") as fh:
        fh.truncate(size)
    run(["sfdisk", "-q", str(tmp)], input=f"label: dos\nstart={PARTITION_OFFSET >> 9}, type=83, bootable\n")
    mkfs_ext4_at(tmp, PARTITION_OFFSET, (size - PARTITION_OFFSET) // 4096, root)
    # First boot straight into the kernel, to let the machine install its own boot loader
    versions = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    installer = VM(
        "pc-installer",
        tmp,
        CACHE / "pc-installer",
        kind="pc",
        user=PC_USER,
        direct_boot=(
            root / f"boot/vmlinuz-{versions[-1]}",
            root / f"boot/initrd.img-{versions[-1]}",
            "root=/dev/vda1 console=ttyS0,115200",
        ),
    )
    installer.start()
    try:
        installer.ssh("sudo grub-install /dev/vda && sudo update-grub", timeout=600)
    finally:
        installer.stop()
    shutil.rmtree(CACHE / "pc-installer", ignore_errors=True)
    tmp.rename(image)
    return _keep_only(image, "pc-amd64-*.img")


# --- the stand-in for a Raspberry Pi OS Lite image (issue #28) ------------------------------------------
# Raspberry Pi OS's layout: an MBR disk, a FAT32 boot partition at 4 MiB holding the kernel, its initramfs,
# cmdline.txt and config.txt, the ext4 root found by PARTUUID, a first user `pi` without a key, SSH off
# and no SSH host keys (Raspberry Pi OS makes them at first boot). The content is the Pi VM's Debian root.
STANDIN_DISK_ID = "4c616c65"  # the MBR's disk identifier: PARTUUIDs 4c616c65-01 and -02
STANDIN_BOOT_MB = 256
STANDIN_SIZE_MB = 2304
# Raspberry Pi OS's boot partition also has a folder (overlays/), and names a FAT keeps: a hidden file and
# one with a space; the image's build must write them all back
STANDIN_FIRMWARE_EXTRA = {
    "overlays/README": "device tree overlays (stand-in)\n",
    "overlays/disable-bt.dtbo": "stand-in\n",
    ".hidden-by-firmware": "stand-in\n",
    "issue name.txt": "Raspberry Pi reference (stand-in)\n",
}
STANDIN_FIRMWARE_HOOK = """#!/bin/sh
# What Raspberry Pi OS's firmware hooks do: the newest kernel and initramfs on the boot partition
set -e
v=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n 1)
[ -n "$v" ] && [ -d /boot/firmware ] || exit 0
cp /boot/vmlinuz-$v /boot/firmware/kernel8.img
[ ! -e /boot/initrd.img-$v ] || cp /boot/initrd.img-$v /boot/firmware/initramfs8
"""


def _standin_root(root: Path) -> None:
    """The Pi VM's root made into Raspberry Pi OS's state as it leaves the factory."""
    for path in [
        "home/pi/.ssh",
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "etc/systemd/system/sshd.service",
    ]:
        target = root / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 raspberrypi\n")
    (root / "etc/machine-id").write_text("")
    part = f"PARTUUID={STANDIN_DISK_ID}"
    (root / "etc/fstab").write_text(
        f"proc /proc proc defaults 0 0\n{part}-01 /boot/firmware vfat defaults 0 2\n"
        f"{part}-02 / ext4 defaults,noatime 0 1\n"
    )
    fw = root / "boot/firmware"
    shutil.rmtree(fw)
    fw.mkdir()
    for hook_dir in ("etc/kernel/postinst.d", "etc/initramfs/post-update.d"):
        hook = root / hook_dir / "z50-lalelu-standin-firmware"
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(STANDIN_FIRMWARE_HOOK)
        hook.chmod(0o755)


def raspios_standin() -> Path:
    """The cached stand-in base image, xz-compressed as Raspberry Pi OS is published."""
    key = _image_key(
        PI_PACKAGES,
        KERNEL,
        INITRAMFS_MODULES,
        PI_CONFIG,
        STANDIN_DISK_ID,
        STANDIN_SIZE_MB,
        STANDIN_BOOT_MB,
        STANDIN_FIRMWARE_HOOK,
        STANDIN_FIRMWARE_EXTRA,
        __import__("inspect").getsource(_standin_root),
    )
    image = CACHE / f"raspios-standin-arm64-{SUITE}-{key}.img.xz"
    if image.exists():
        return image
    root = _pi_root()
    stage = CACHE / "standin-root.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    run(["cp", "-a", str(root), str(stage)], timeout=1200)
    try:
        _standin_root(stage)
        kernel, initrd = (sorted((stage / "boot").glob(f"{n}-*"))[-1] for n in ("vmlinuz", "initrd.img"))
        cmdline = (
            f"console=ttyAMA0,115200 console=tty1 root=PARTUUID={STANDIN_DISK_ID}-02 rootfstype=ext4 "
            "fsck.repair=yes rootwait"
        )
        disk = image.with_suffix(".tmp")
        disk.unlink(missing_ok=True)
        with open(disk, "wb") as fh:
            fh.truncate(STANDIN_SIZE_MB << 20)
        boot_start = 4 << 20
        root_start = boot_start + (STANDIN_BOOT_MB << 20)
        run(
            ["sfdisk", "-q", str(disk)],
            input=f"label: dos\nlabel-id: 0x{STANDIN_DISK_ID}\n"
            f"start={boot_start >> 9}, size={STANDIN_BOOT_MB << 11}, type=c\n"
            f"start={root_start >> 9}, type=83\n",
        )
        run(
            [
                "mkfs.vfat",
                "-F",
                "32",
                "-s",
                "1",  # one sector a cluster: FAT32 needs 65525 clusters, 256 MiB of 4 KiB ones are fewer
                "-n",
                "bootfs",
                "--offset",
                str(boot_start >> 9),
                str(disk),
                str(STANDIN_BOOT_MB << 10),
            ]
        )
        files = stage / "firmware.tmp"
        files.mkdir()
        (files / "cmdline.txt").write_text(cmdline + "\n")
        (files / "config.txt").write_text(PI_CONFIG + "auto_initramfs=1\n")
        shutil.copy(kernel, files / "kernel8.img")
        shutil.copy(initrd, files / "initramfs8")
        for name, text in STANDIN_FIRMWARE_EXTRA.items():
            (files / name).parent.mkdir(exist_ok=True)
            (files / name).write_text(text)
        run(["mcopy", "-s", "-i", f"{disk}@@{boot_start}", *map(str, sorted(files.iterdir())), "::"])
        shutil.rmtree(files)
        mkfs_ext4_at(disk, root_start, ((STANDIN_SIZE_MB << 20) - root_start) // 4096, stage)
        with open(image.with_suffix(".xz.tmp"), "wb") as out:
            subprocess.run(["xz", "-1", "-T0", "-c", str(disk)], stdout=out, check=True, timeout=1200)
        disk.unlink()
        image.with_suffix(".xz.tmp").rename(image)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return _keep_only(image, "raspios-standin-arm64-*.img.xz")


def partitions(disk: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition of an MBR disk; [] for a bare file system."""
    import json

    r = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return []
    table = json.loads(r.stdout)["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in table.get("partitions", [])]


def fat_read(disk: Path, offset: int, name: str) -> bytes:
    r = subprocess.run(["mtype", "-i", f"{disk}@@{offset}", f"::{name}"], capture_output=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(
            f"cannot read {name} from the boot partition of {disk}: {r.stderr.decode()[-500:]}"
        )
    return r.stdout


def mkfs_ext4_at(disk: Path, offset: int, blocks: int, root: Path) -> None:
    """An ext4 file system labelled rootfs holding `root`'s tree, `blocks` of 4 KiB at `offset` in `disk`."""
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-b", "4096", "-E", f"offset={offset}", "-d", str(root),
         str(disk), str(blocks)],
        timeout=1200,
    )  # fmt: skip


def debugfs_read(disk: Path, path: str) -> bytes:
    r = subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"cannot read {path} from {disk}: {r.stderr.decode()[-500:]}")
    return r.stdout


def _newest_kernel(disk: Path) -> tuple[str, str]:
    """/boot/vmlinuz-V and /boot/initrd.img-V of the newest kernel on the disk (what the firmware loads)."""
    r = subprocess.run(["debugfs", "-R", "ls /boot", str(disk)], capture_output=True, text=True, timeout=60)
    names = r.stdout.split()
    versions = sorted(n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-"))
    if not versions:
        raise RuntimeError(f"no kernel in /boot of {disk}")
    v = versions[-1]
    return f"/boot/vmlinuz-{v}", f"/boot/initrd.img-{v}"


@dataclass
class Boot:
    cmdline: str
    started: float
    ssh_after_s: float | None = None


@dataclass
class VM:
    """One booted VM. `start()` boots it and waits for SSH; guest reboots are followed; `power_cut()`
    kills QEMU like a pulled plug; `stop()` powers it off."""

    name: str
    disk: Path
    workdir: Path
    # pi: arm64, the kernel, initrd and line read off the disk at every boot, as the Pi firmware does;
    # pc: x86-64, SeaBIOS boots the disk's GRUB
    kind: str = "pi"
    user: str = USER
    # (kernel, initrd, line) from the host instead: how the PC image boots once to install GRUB
    direct_boot: tuple[Path, Path, str] | None = None
    smp: int = 4
    memory_mb: int = 2048
    ssh_port: int = field(default_factory=free_port)
    # more QEMU user-network options: hostfwd=... / guestfwd=... for the rig's other machine
    net_extra: str = ""
    restrict: bool = True
    boots: list[Boot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._off = threading.Event()
        self._thread: threading.Thread | None = None
        self.console = self.workdir / f"{self.name}-console.log"

    # --- QEMU ---------------------------------------------------------------------------------------
    def _boot_args(self) -> tuple[list[str], str]:
        if self.direct_boot is not None:
            kernel, initrd, cmdline = self.direct_boot
        elif self.kind == "pi" and (parts := partitions(self.disk)):
            # a Raspberry Pi OS layout: the firmware reads everything off the FAT boot partition
            kernel, initrd = self.workdir / "kernel", self.workdir / "initrd"
            kernel.write_bytes(fat_read(self.disk, parts[0][0], "kernel8.img"))
            initrd.write_bytes(fat_read(self.disk, parts[0][0], "initramfs8"))
            cmdline = fat_read(self.disk, parts[0][0], "cmdline.txt").decode().strip()
        elif self.kind == "pi":
            kernel_path, initrd_path = _newest_kernel(self.disk)
            kernel, initrd = self.workdir / "kernel", self.workdir / "initrd"
            kernel.write_bytes(debugfs_read(self.disk, kernel_path))
            initrd.write_bytes(debugfs_read(self.disk, initrd_path))
            cmdline = debugfs_read(self.disk, "/boot/firmware/cmdline.txt").decode().strip()
        else:
            return [], ""  # GRUB's own line, read back from /proc/cmdline once it runs
        return ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline], cmdline

    def _qemu(self) -> subprocess.Popen:
        boot, cmdline = self._boot_args()
        net = f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        if self.restrict:
            net += ",restrict=on"
        if self.net_extra:
            net += "," + self.net_extra
        if self.kind == "pi":
            machine = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72"]
        else:
            machine = ["qemu-system-x86_64", "-M", "pc", "-cpu", "max"]
        cmd = [
            *machine,
            "-smp", str(self.smp),
            "-m", str(self.memory_mb),
            *boot,
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=writeback",
            "-netdev", net,
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci",
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console}.part",
            "-no-reboot",
        ]  # fmt: skip
        self.boots.append(Boot(cmdline, time.monotonic()))
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def _supervise(self) -> None:
        """Boot again whenever the guest reboots (QEMU exits with -no-reboot), as a Pi's firmware would."""
        while not self._off.is_set():
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            proc.wait()
            tail = self._console_tail()
            with self._lock:
                if self._off.is_set() or self._proc is not proc:
                    return  # powered off or cut by the test
                if "reboot: Restarting system" not in tail:
                    self._proc = None  # the guest powered itself off
                    return
                self._proc = self._qemu()

    def _console_tail(self) -> str:
        part = Path(f"{self.console}.part")
        text = part.read_text(errors="replace") if part.exists() else ""
        with open(self.console, "a") as fh:  # keep every boot's console, one after the other
            fh.write(text)
        part.unlink(missing_ok=True)
        return text[-2000:]

    def start(self, timeout: float = 600) -> float:
        """Power on and wait until SSH answers; returns the seconds that took."""
        with self._lock:
            self._off.clear()
            self._proc = self._qemu()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self.wait_for_ssh(timeout)

    def wait_for_ssh(self, timeout: float = 600) -> float:
        t0 = self.boots[-1].started
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                proc = self._proc
            if proc is not None and proc.poll() is not None and proc.returncode != 0:
                raise RuntimeError(
                    f"QEMU exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
                )
            try:
                r = self.ssh("true", timeout=20, check=False)
            except subprocess.TimeoutExpired:  # sshd up but the booting guest too slow to answer: not yet
                continue
            if r.returncode == 0:
                took = time.monotonic() - t0
                self.boots[-1].ssh_after_s = took
                if not self.boots[-1].cmdline:
                    self.boots[-1].cmdline = self.ssh("cat /proc/cmdline").stdout.strip()
                return took
            time.sleep(2)
        raise TimeoutError(
            f"{self.name}: no SSH after {timeout:.0f} s; console:\n{self.console_text()[-3000:]}"
        )

    def console_text(self) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else ""
        part = Path(f"{self.console}.part")
        return text + (part.read_text(errors="replace") if part.exists() else "")

    def power_cut(self) -> None:
        """SIGKILL QEMU: the guest loses everything it had not written, like a pulled plug."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        self._console_tail()

    def stop(self) -> None:
        self._off.set()
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ssh("sudo systemctl poweroff", timeout=20, check=False)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        if Path(f"{self.console}.part").exists():
            self._console_tail()

    # --- SSH ----------------------------------------------------------------------------------------
    def ssh_args(self) -> list[str]:
        return [
            "-i", str(ssh_key()),
            "-p", str(self.ssh_port),
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh(self, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        # stdin from /dev/null: ssh makes its stdin non-blocking and, killed at a timeout, leaves it so;
        # inherited, that was pytest's, and every later ansible-playbook refused to run on it.
        r = subprocess.run(
            ["ssh", "-n", *self.ssh_args(), f"{self.user}@127.0.0.1", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"ssh {self.name} {command!r} failed ({r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}"
            )
        return r

    def inventory_vars(self) -> dict[str, object]:
        """How Ansible (and fab) reach this VM: the Imager's user, the forwarded port, the test key."""
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.ssh_port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(ssh_key()),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        }


def fresh_pi(workdir: Path, **kw) -> VM:
    """A freshly imaged Pi: a copy of the cached image (sparse, so seconds) booted by its own VM."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "pi.img"
    run(["cp", "--sparse=always", str(pi_image()), str(disk)])
    return VM("pi", disk, workdir, **kw)


def fresh_pc(workdir: Path, **kw) -> VM:
    """A freshly installed PC: a copy of the cached image."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "pc.img"
    run(["cp", "--sparse=always", str(pc_image()), str(disk)])
    return VM("pc", disk, workdir, kind="pc", user=PC_USER, **kw)


if __name__ == "__main__":
    import sys

    kinds = {"pi": (pi_image, fresh_pi), "pc": (pc_image, fresh_pc)}
    if len(sys.argv) == 3 and sys.argv[1] == "build" and sys.argv[2] in kinds:
        print(kinds[sys.argv[2]][0]())
    elif len(sys.argv) == 3 and sys.argv[1] == "boot" and sys.argv[2] in kinds:
        vm = kinds[sys.argv[2]][1](Path(os.environ.get("TMPDIR", "/tmp")) / f"lalelu-{sys.argv[2]}-vm")
        print(f"booted in {vm.start():.1f} s: ssh {' '.join(vm.ssh_args())} {vm.user}@127.0.0.1")
        try:
            signal.pause()
        finally:
            vm.stop()
    else:
        print("usage: python tests/vm.py build|boot pi|pc", file=sys.stderr)
        sys.exit(2)


class LinkProxy:
    """The network link between the rig's two VMs: a TCP relay on this machine's loopback that the test
    can cut (silence, like a pulled cable) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up.is_set():
                with self._lock:
                    self._socks.append(client)  # a pulled cable: nothing answers, nothing is refused
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                if self._up.is_set():
                    dst.sendall(data)  # else lost on the cut cable
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Like a pulled cable: whatever is sent is lost, no connection is reset or refused."""
        self._up.clear()

    def restore(self) -> None:
        """The cable back: connections that lived through the cut stay dead (their bytes were lost,
        as TCP would time them out); new ones go through."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.restore()
        self._server.close()


# --- the rig: both VMs provisioned by one site.yml run, shared by the VM tests -------------------------
ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
BACKEND_ADDRESS = "10.0.2.100"  # where the Pi's QEMU forwards the backend's port from
EDGE_SEEN_FROM = "10.0.2.2"  # the address QEMU's user network gives forwarded connections in the PC
# The emulated rig's pose rate: a pose every 0.5-3.5 s (the emulated backend infers for 0.5-3 s, more on
# a loaded machine). A 2-s nod sampled every 3 s aliases into no stroke at all, for any reader, so the VM's
# nod takes 40 s, and its mapping (written to the Pi before provisioning, as a user's own mapping would
# be) is the demo's nod at that speed.
VM_MAPPING = "/etc/lalelu-test/slow-nod.toml"
VM_MAPPING_TEXT = """[instrument]
name = "slow nod (the emulated rig)"
channel = 10
note_length_ms = 50
min_score = 0.3

[[strike]]
name = "nod"
keypoint = "nose"
mode = "reversal"
note = "kick"
min_speed = 0.01
max_speed = 0.05
rearm = 0.05
"""
# The Pi's edge: the still photo instead of the Pi camera (the one change from group_vars/edge.yml
# besides the packages of the Pi's own repository), slow enough for emulated inference
VM_EDGE_CONFIG = {
    "engine": {"kind": "litert", "threads": 1, "warmup": 3},
    "camera": {
        "source": "still",
        "width": 320,
        "height": 240,
        "fps": 4,
        "pixel_format": "yuv420",
        "still_period_s": 40.0,
        # 0.15 keeps the nose inside the frame (22-94 px of 240). At 0.3 it left the picture at the top
        # of each nod: the model found a "nose" elsewhere (score 0.36), the keypoint was lost and came
        # back mid-descent, unarmed, and 2 of 15 nods played (tools-free replay of this rig's frame
        # schedule on the real model, 2026-12-06; 0.15: 14 of 15, the first is the reader's warm-up)
        "still_amplitude": 0.15,
    },
    "edge": {
        "backend": "{{ lalelu_edge_backend }}",
        "cpus": [3],
        "sched_fifo": True,
        "summary_interval_s": 5,
        "telemetry": "/run/lalelu/telemetry.jsonl",
        "reconnect_max_s": 2.0,
        # the emulated backend takes 0.5-3 s a frame: the real rig's 0.15 s would call it hung
        "reply_timeout_s": 10.0,
        "max_in_flight": 2,
        # every frame queued: at seconds per frame only a queue gives the gestures enough poses of each
        # nod to play it (on real hardware the 20 ms budget skips frames that would arrive late instead)
        "latency_budget_ms": 0,
    },
    "output": {"kind": "log", "where": "edge", "mapping": VM_MAPPING},
}
VM_LINK_KEY = "vm-rig-link-key-9d2f41c0a7e3b5"
VM_MONITOR_TOKEN = "vm-rig-monitor-token-52ae"
EDGE_UNIT = "lalelu-edge"
FIGURES: dict[str, object] = {}  # printed at the end of the session (pytest -s)


def playbook(inv: Path, *args: str, book: str = "site.yml") -> tuple[subprocess.CompletedProcess, float]:
    """Exactly the README's command (`cd ansible && ansible-playbook site.yml`, or image.yml), with the
    test's inventory; its output kept beside the inventory (site-0.log, image-0.log, ...)."""
    import sys

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", PATH=f"{bin_dir}:{os.environ['PATH']}")
    t0 = time.monotonic()
    r = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", str(inv), book, *args],
        cwd=ANSIBLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        stdin=subprocess.DEVNULL,  # Ansible refuses a non-blocking stdin
    )
    stem = Path(book).stem
    (inv.parent / f"{stem}-{len(list(inv.parent.glob(f'{stem}-*.log')))}.log").write_text(r.stdout + r.stderr)
    return r, time.monotonic() - t0


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP: host -> ok/changed/failed/... counts."""
    import re

    found = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.M):
        found[m[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])}
    return found


def main_pid(vm: VM, unit: str) -> int:
    """The unit's MainPID while it is active (READY=1 sent), else 0."""
    out = vm.ssh(f"systemctl show -p MainPID -p ActiveState --value {unit}").stdout.split()
    return int(out[0]) if len(out) == 2 and out[1] == "active" else 0


def journal(vm: VM, match: str) -> str:
    """This boot's journal lines (message only) of a unit (`-u NAME`) or any journalctl match."""
    return vm.ssh(f"sudo journalctl -b --no-pager -o cat {match}", check=False).stdout


def exposure(vm: VM, unit: str) -> float:
    """`systemd-analyze security`'s overall exposure of a unit on the running machine (0 safe .. 10)."""
    import re

    out = vm.ssh(f"sudo systemd-analyze security --no-pager {unit}").stdout
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert found, out[-2000:]
    return float(found[1])


def hits(pi: VM, match: str = f"-u {EDGE_UNIT}") -> int:
    return journal(pi, match).count("hit nod")


def restarted_and_playing(pi: VM, old_pid: int, t0: float, timeout: float = 300) -> tuple[float, float]:
    """Seconds from t0 until the unit runs again with a new pid (READY=1), and until that process
    reports poses reaching its gesture reader (its state file; hits need a nod the emulated rig may be
    too slow to show within the wait)."""
    pid = wait_until(
        f"{EDGE_UNIT} active again",
        lambda: (p := main_pid(pi, EDGE_UNIT)) != old_pid and p,
        timeout,
        every_s=1,
    )
    ready = time.monotonic() - t0

    def poses() -> bool:
        state = edge_state(pi)
        return state.get("pid") == pid and state.get("poses", 0) > 0

    wait_until(f"poses from the new {EDGE_UNIT} (pid {pid})", poses, timeout, every_s=1)
    return ready, time.monotonic() - t0


def edge_state(pi: VM) -> dict:
    """The running edge's state file (lalelu.runtime.state), {} while it has written none."""
    import json

    r = pi.ssh("sudo cat /run/lalelu/edge-state.json", check=False)  # 0640: the unit's UMask
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}


@dataclass
class Rig:
    """The "Pi" and the "GPU PC", booted, in one inventory, provisioned by one `site.yml` run. The Pi
    reaches the backend through this machine's loopback only: its QEMU forwards 10.0.2.100:7600 (socat per
    connection) to `cable`, a relay here that the tests can cut, and the relay to the PC's forwarded port."""

    pi: VM
    pc: VM
    cable: LinkProxy
    inventory: Path
    first_run: subprocess.CompletedProcess

    @classmethod
    def up(cls, tmp: Path) -> Rig:
        t0 = time.monotonic()
        ssh_key()  # before the two builds, which both put it into their images
        # built side by side: the Pi's is mostly one emulated CPU (qemu-user), the PC's downloads and boots
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for build in [pool.submit(pi_image), pool.submit(pc_image)]:
                build.result()  # a build's failure is raised here
        FIGURES["images_ready_s"] = round(time.monotonic() - t0, 1)
        backend_port = free_port()
        cable = LinkProxy(backend_port)
        pc = fresh_pc(tmp / "pc", net_extra=f"hostfwd=tcp:127.0.0.1:{backend_port}-:7600")
        pi = fresh_pi(
            tmp / "pi",
            net_extra=f"guestfwd=tcp:{BACKEND_ADDRESS}:7600-cmd:socat - TCP:127.0.0.1:{cable.port}",
        )
        booted: dict[str, float] = {}
        threads = [
            threading.Thread(target=lambda v=v: booted.__setitem__(v.name, v.start())) for v in (pi, pc)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        FIGURES["boot_to_ssh_s"] = {k: round(v, 1) for k, v in booted.items()}
        inv = tmp / "hosts.yml"
        edge = dict(
            pi.inventory_vars(),
            pi_camera_install_packages=False,  # python3-picamera2, rpicam-apps: the Pi's own repository
            pi_camera_check=False,  # no camera in a VM
            lalelu_monitor_token=VM_MONITOR_TOKEN,  # the page on the LAN, as at a venue
            lalelu_app_config=VM_EDGE_CONFIG,
            lalelu_edge_address=EDGE_SEEN_FROM,
        )
        backend = dict(
            pc.inventory_vars(),
            lalelu_backend_address=BACKEND_ADDRESS,
            nvidia_gpu_install_driver=False,  # never reached: site.yml finds no GPU in a VM and says so
        )
        import json

        inv.write_text(
            json.dumps(  # JSON is YAML; as inventory/hosts.yml, reboots allowed
                {
                    "all": {
                        "vars": {
                            "rt_tuning_allow_reboot": True,
                            "lalelu_venv": "/opt/lalelu/venv",
                            # emulated, one frame takes 0.5-5 s (a real Pi: ~0.02 s); the real rig's
                            # 5 s watchdog would kill a loop that is only slow
                            "lalelu_app_watchdog_s": 30,
                            "lalelu_link_key": VM_LINK_KEY,  # edge and backend prove it to each other
                        },
                        "children": {
                            "edge": {"hosts": {"pi-vm": edge}},
                            "backend": {"hosts": {"pc-vm": backend}},
                        },
                    }
                }
            )
        )
        pi.ssh(
            f"sudo mkdir -p {Path(VM_MAPPING).parent} && sudo tee {VM_MAPPING} >/dev/null << 'EOF'\n"
            f"{VM_MAPPING_TEXT}EOF"
        )
        first, took = playbook(inv)
        FIGURES["first_run_s"] = round(took, 1)
        return cls(pi, pc, cable, inv, first)

    def down(self) -> None:
        self.cable.close()
        for v in (self.pi, self.pc):
            v.stop()
