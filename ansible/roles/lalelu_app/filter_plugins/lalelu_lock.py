"""Which lines of a host's lock file (tools/lock_wheelhouse.py) its wheelhouse downloads and its pip obeys."""

from __future__ import annotations

import re

_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)\s+#\s*via (?P<via>[^;]*);\s*for (?P<for>.*)$"
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lalelu_lock_select(lock_text: str, extras: str, host_packages: dict | None = None) -> dict:
    """{download, constraints, kept}: the pins to download for these extras (comma separated), the
    constraints the host installs under, and the host's own packages kept in place of the lock's.

    A line is left out where the host has that package (host_packages: name -> installed version) or
    where it comes only through packages the host has (the Pi's numpy; a GPU host's own torch and its
    CUDA libraries)."""
    kept = {_normalize(n): v for n, v in (host_packages or {}).items()}
    wanted = {"base"} | {e.strip() for e in extras.split(",") if e.strip()}
    download, constraints = [], []
    for raw in lock_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"lock line not understood: {line!r} (regenerate with tools/lock_wheelhouse.py)")
        name = _normalize(m["name"])
        roots = {_normalize(r) for r in m["via"].split()}
        if name in kept or (roots and roots <= set(kept)):
            continue
        pin = f"{m['name']}=={m['version']}"
        constraints.append(pin)
        if wanted & set(m["for"].split()):
            download.append(pin)
    constraints += [f"{n}=={v}" for n, v in sorted(kept.items())]
    return {"download": download, "constraints": constraints, "kept": sorted(kept)}


class FilterModule:
    def filters(self):
        return {"lalelu_lock_select": lalelu_lock_select}
