#!/usr/bin/env python3
"""Write the hosts' lock files: every wheel a host may install, pinned, one file per platform.

    python tools/lock_wheelhouse.py                 # every platform in TARGETS (a few minutes)
    python tools/lock_wheelhouse.py --only cp311-aarch64-glibc2.36-numpy1.24.2
    python tools/lock_wheelhouse.py --python 3.12 --arch x86_64 --glibc 2.39   # a platform of your own

The controller's wheelhouse (the lalelu_app role) downloads exactly the lines of the host's lock that its
extras need, and the host installs with the same lines as pip constraints: two controllers, a year apart,
provision the same host. Run this after changing pyproject.toml's dependencies and commit the files
(ansible/locks/). pip resolves each platform as that host would (`pip install --dry-run --report` with
--platform/--python-version, binary wheels only), with every extra a host can have (edge, backend,
gpu-torch), and records for each package the project's direct dependencies that pull it in ("via") and
the extras that need it ("for"). The role drops the lines of packages the host already has (the Pi's
Debian numpy; a GPU host's own torch and whatever comes only through it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "ansible" / "locks"
EXTRAS = ("edge", "backend", "gpu-torch")
# gpu-tensorrt (opt-in) is locked only on request (--extras ...,gpu-tensorrt): tensorrt-cu12's libraries
# are not binary wheels on PyPI, so that lock needs NVIDIA's index (--pip-arg=--extra-index-url=...).


@dataclass(frozen=True)
class Target:
    python: str  # "3.11"
    arch: str  # aarch64 | x86_64
    glibc: str  # "2.36"
    numpy: str = ""  # the host's own numpy the venv keeps (the Pi: picamera2 is built for it)
    note: str = ""

    @property
    def key(self) -> str:
        """The name the lalelu_app role computes from the host's facts (its wheelhouse folder too)."""
        py = self.python.replace(".", "")
        return f"cp{py}-{self.arch}-glibc{self.glibc}" + (f"-numpy{self.numpy}" if self.numpy else "")

    def platforms(self) -> list[str]:
        minor = int(self.glibc.split(".")[1])
        return [f"manylinux_2_{m}_{self.arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{self.arch}"]


# The hosts the README names: Raspberry Pi OS bookworm (arm64, the Debian numpy kept), and a GPU PC on
# Debian bookworm or Ubuntu 24.04 (x86-64). The booted VMs of the tests are Debian bookworm. Python 3.13
# (trixie) cannot be locked yet: python-rtmidi has no cp313 wheel (2026-12-06), and hosts get wheels only.
TARGETS = [
    Target("3.11", "aarch64", "2.36", numpy="1.24.2", note="Raspberry Pi OS / Debian bookworm arm64"),
    Target("3.11", "x86_64", "2.36", note="Debian bookworm x86-64"),
    Target("3.11", "x86_64", "2.36", numpy="1.24.2", note="Debian bookworm x86-64 keeping Debian's numpy"),
    Target("3.12", "x86_64", "2.39", note="Ubuntu 24.04 x86-64"),
]
# torch 2.10 is PyPI's last build for CUDA 12 (12.8); 2.11 on need CUDA 13, i.e. an NVIDIA driver 580 or
# newer, which Debian bookworm (535) and trixie (550) do not package. CUDA 12 runs on drivers 525 and up.
TORCH_CUDA12 = "torch<2.11"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(target: Target, work: Path, extras: tuple[str, ...], pip_args: list[str]) -> list[dict] | None:
    """pip's installation report for the project with every host extra, as `target` would install it
    (None, with pip's reason printed, where a wheel is missing for that platform)."""
    report = work / f"{target.key}.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--disable-pip-version-check",
        "--report",
        str(report),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        target.python,
        "--target",
        str(work / "t"),
    ]
    for platform in target.platforms():
        cmd += ["--platform", platform]
    constraint = work / f"{target.key}.constraints.txt"
    constraint.write_text(TORCH_CUDA12 + "\n" + (f"numpy=={target.numpy}\n" if target.numpy else ""))
    cmd += ["--constraint", str(constraint)]
    cmd += pip_args
    cmd.append(f"{ROOT}[{','.join(extras)}]")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        print(f"lock: {target.key} cannot be locked: " + " ".join(reason)[-1500:], file=sys.stderr)
        return None
    return json.loads(report.read_text())["install"]


def lock_lines(
    install: list[dict], target: Target, extras: tuple[str, ...]
) -> list[tuple[str, str, list[str], list[str]]]:
    """(name, version, via, for) for every package but the project, from the report's dependency graph.

    Each requirement's marker is evaluated for the target (its Python, CPU, Linux) with the extras asked of
    that package, as pip does: a test-only extra of a dependency pulls nothing in."""
    by_name = {normalize(item["metadata"]["name"]): item for item in install}
    env = {
        "python_version": target.python,
        "python_full_version": target.python + ".0",
        "platform_machine": target.arch,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }

    def deps(name: str, extras: frozenset[str]) -> list[tuple[str, frozenset[str]]]:
        out = []
        for text in by_name[name]["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
            )
            if wanted and normalize(req.name) in by_name:
                out.append((normalize(req.name), frozenset(req.extras)))
        return out

    def reach(name: str, extras: frozenset[str]) -> set[str]:
        seen = {(name, extras)}
        todo = [(name, extras)]
        while todo:
            for dep in deps(*todo.pop()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return {n for n, _ in seen}

    via: dict[str, set[str]] = {}
    needed_for: dict[str, set[str]] = {}
    for extra in ("base", *extras):
        for root, root_extras in deps("lalelu-drums", frozenset() if extra == "base" else frozenset({extra})):
            if extra != "base" and (root, root_extras) in deps("lalelu-drums", frozenset()):
                continue  # a base dependency, not this extra's
            for name in reach(root, root_extras):
                via.setdefault(name, set()).add(root)
                needed_for.setdefault(name, set()).add(extra)
    rows = []
    for name in sorted(via):
        rows.append((name, by_name[name]["metadata"]["version"], sorted(via[name]), sorted(needed_for[name])))
    return rows


def dependencies_sha(pyproject: Path) -> str:
    """sha256 of what a lock is resolved from: requires-python, dependencies and every extra. A change
    elsewhere in pyproject.toml (scripts, packages, tool settings) leaves the locks valid."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = {k: project.get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def write_lock(target: Target, rows, pyproject_sha: str) -> Path:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    path = LOCK_DIR / f"{target.key}.txt"
    head = [
        f"# lalelu-drums: the wheels a {target.note or target.key} host may install ({target.key})",
        "# made by `python tools/lock_wheelhouse.py` from pyproject.toml's dependencies sha256 "
        + pyproject_sha[:16],
        "# name==version  # via: the project's direct dependencies that pull it in; for: the extras that need it",
    ]
    body = [f"{n}=={v}  # via {' '.join(via)}; for {' '.join(fr)}" for n, v, via, fr in rows]
    path.write_text("\n".join(head + body) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], help="lock only these keys of TARGETS (default: all)")
    ap.add_argument("--python", help="a platform of your own: its Python (3.12)")
    ap.add_argument("--arch", default="x86_64", help="its CPU (x86_64, aarch64; default %(default)s)")
    ap.add_argument(
        "--glibc", default="2.36", help="its C library (getconf GNU_LIBC_VERSION; default %(default)s)"
    )
    ap.add_argument("--numpy", default="", help="the host's own numpy the venv keeps (default: none)")
    ap.add_argument("--extras", default=",".join(EXTRAS), help="the extras to lock (default %(default)s)")
    ap.add_argument(
        "--pip-arg", action="append", default=[], help="passed to pip (an index of your own, say)"
    )
    args = ap.parse_args(argv)
    extras = tuple(e for e in args.extras.split(",") if e)
    if args.python:
        targets = [Target(args.python, args.arch, args.glibc, args.numpy)]
    else:
        known = {t.key: t for t in TARGETS}
        unknown = [k for k in args.only if k not in known]
        if unknown:
            ap.error(f"unknown keys {unknown}; known: {sorted(known)} (or give --python/--arch/--glibc)")
        targets = [known[k] for k in args.only] if args.only else TARGETS
    pyproject_sha = dependencies_sha(ROOT / "pyproject.toml")
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            print(
                f"lock: resolving {target.key} ({target.note or 'your platform'}) ...",
                file=sys.stderr,
                flush=True,
            )
            install = resolve(target, Path(tmp), extras, args.pip_arg)
            if install is None:
                failed.append(target.key)
                continue
            rows = lock_lines(install, target, extras)
            path = write_lock(target, rows, pyproject_sha)
            print(f"lock: {path.relative_to(ROOT)}: {len(rows)} packages", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
