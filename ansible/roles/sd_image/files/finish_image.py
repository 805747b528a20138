#!/usr/bin/env python3
"""Finish a provisioned image's root before it is closed (run on the controller by sd_image's close.yml):

1. removes what must not be on every card alike or is only a cache: SSH host keys (made at first boot),
   the machine id (emptied: systemd makes one at first boot), apt's and pip's caches, temporary files;
2. dates every file the build wrote (changed since --since) --epoch, so the same inputs give the same files;
3. writes the manifest: the Debian packages, the app venv's Python packages, and one digest over every
   file's path, type, mode, owner, size, date and content (caches and logs left out).

python3 finish_image.py ROOT --since T --epoch E --venv V --manifest OUT.json --files OUT.txt --facts JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

# Left out of the digest: caches, logs and state the first boot rewrites anyway
UNDIGESTED = (
    "proc/", "sys/", "dev/", "run/", "tmp/", "var/tmp/", "var/cache/", "var/log/", "var/lib/apt/lists/",
    "var/lib/systemd/", "var/lib/dhcp/", "root/.cache/", "root/.ansible/", "lost+found/",
)  # fmt: skip
REMOVED = (
    "etc/ssh/ssh_host_*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_Packages*",
    "var/lib/apt/lists/*_InRelease",
    "var/lib/apt/lists/*_Release*",
    "var/lib/apt/lists/*_Translation*",
    "root/.cache",
    "root/.ansible",
    "tmp/*",
    "var/tmp/*",
    "usr/sbin/policy-rc.d",
    # cmdline.txt and config.txt as the base had them: ansible's backups, the base image keeps them
    "boot/firmware/*~",
)


def remove_transient(root: Path, since: float) -> list[str]:
    gone = []
    for pattern in REMOVED:
        for path in root.glob(pattern):
            if pattern.endswith("~") and path.lstat().st_ctime < since:
                continue  # a file of the base itself
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            gone.append(str(path.relative_to(root)))
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    return gone


def date_changes(root: Path, since: float, epoch: int) -> int:
    """Every file and folder changed since the build began dated `epoch` (ctime marks a change, and a
    file's own date may be older: a wheel's entries keep theirs)."""
    dated = 0
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if st.st_ctime >= since:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                dated += 1
    os.utime(root, (epoch, epoch))
    return dated


def digest(root: Path, listing: Path) -> tuple[str, int]:
    """One sha256 over the sorted tree (boot/firmware holds the FAT partition's files), and the tree's
    lines written to `listing`: path, type, mode, owner, group, date, [link target | size, sha256]."""
    h = hashlib.sha256()
    count = 0
    entries = []
    out = open(listing, "w")  # noqa: SIM115 (closed below, after the walk)
    for top, dirs, files in os.walk(root):
        rel_top = os.path.relpath(top, root)
        rel_top = "" if rel_top == "." else rel_top + "/"
        # compiled Python is a cache too, and not reproducible: marshal's bytes depend on reference counts
        dirs[:] = sorted(
            d for d in dirs if d != "__pycache__" and not (rel_top + d + "/").startswith(UNDIGESTED)
        )
        entries += [rel_top + name for name in [*dirs, *files]]
    for rel in sorted(entries):
        path = root / rel
        st = path.lstat()
        line = f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_uid}\0{st.st_gid}"
        line += f"\0{int(st.st_mtime)}"
        if stat.S_ISLNK(st.st_mode):
            line += "\0" + os.readlink(path)
        elif stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
            line += f"\0{st.st_size}\0(not world-readable: a secret's hash would let it be guessed)"
        elif stat.S_ISREG(st.st_mode):
            fh = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    fh.update(block)
            line += f"\0{st.st_size}\0{fh.hexdigest()}"
        h.update(line.encode() + b"\n")
        out.write(line.replace("\0", "\t") + "\n")
        count += 1
    out.close()
    return h.hexdigest(), count


def debian_packages(root: Path) -> dict[str, str]:
    text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    found = {}
    for block in text.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Architecture|Status): (.*)$", block, re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found[f"{fields['Package']}:{fields.get('Architecture', '')}"] = fields.get("Version", "")
    return dict(sorted(found.items()))


def python_packages(root: Path, venv: str) -> dict[str, str]:
    found = {}
    for meta in root.glob(f"{venv.lstrip('/')}/lib/python3*/site-packages/*.dist-info/METADATA"):
        fields = dict(re.findall(r"^(Name|Version): (.*)$", meta.read_text(errors="replace")[:4000], re.M))
        if "Name" in fields:
            found[fields["Name"]] = fields.get("Version", "")
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


SECRET = re.compile(r"(_key$|^key$|token|password|psk|passphrase)")


def redacted(value: object) -> object:
    """Values of keys that name a secret, at any depth (a token inside lalelu_app_config, say), replaced."""
    if isinstance(value, dict):
        return {k: "(secret, not shown)" if SECRET.search(str(k)) else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--since", type=float, required=True)
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--files", type=Path, required=True, help="the tree's lines, one a file")
    p.add_argument("--facts", required=True, help="JSON: what the manifest says besides the packages")
    args = p.parse_args()
    facts = redacted(json.loads(args.facts))
    assert isinstance(facts, dict)
    removed = remove_transient(args.root, args.since)
    dated = date_changes(args.root, args.since, args.epoch)
    tree, files = digest(args.root, args.files)
    manifest = {
        **facts,
        "epoch": args.epoch,
        "files": {
            "count": files,
            "sha256": tree,
            "list": args.files.name,
            "left_out": [*UNDIGESTED, "__pycache__/"],
        },
        "debian_packages": debian_packages(args.root),
        "python_packages": python_packages(args.root, args.venv),
    }
    args.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"removed": len(removed), "dated": dated, "files": files, "sha256": tree}))


if __name__ == "__main__":
    main()
