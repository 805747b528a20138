"""The manual's pictures and links: the wiring picture is what its script draws, and every file or
folder the README and docs/ point to exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_wiring_picture_is_what_its_script_draws():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools/draw_wiring.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_every_relative_link_of_the_manual_exists():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_the_manual_names_commands_that_exist():
    """Every `lalelu SUBCOMMAND` the README tells a user to type is one the command line knows."""
    from lalelu.cli.main import build_parser

    known = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    used = set(re.findall(r"`(?:sudo )?lalelu ([a-z]+)", (ROOT / "README.md").read_text()))
    assert used and used <= known, used - known
