"""Draw the rig's wiring (docs/wiring.svg, shown in the README): what plugs into what at a gig.

`python tools/draw_wiring.py` writes the picture; `--check` exits 1 when the committed one differs from
what this script draws (tests/test_docs.py), so the picture and its source never drift apart.
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "wiring.svg"

# name -> (x, y, width, height, title, lines below the title)
BOXES: dict[str, tuple[int, int, int, int, str, tuple[str, ...]]] = {
    "camera": (30, 60, 190, 70, "Pi camera", ("Camera Module 3 or 2", "facing the player")),
    "pi": (
        290,
        40,
        220,
        110,
        "Raspberry Pi 4/5 (edge)",
        ("lalelu-edge service", "camera, gestures, sound", "monitor page :8700"),
    ),
    "psu": (30, 180, 205, 60, "Pi power supply", ("27 W USB-C (Pi 5), 15 W (Pi 4)",)),
    "switch": (600, 60, 170, 70, "switch or router", ("wired: Ethernet", "phones: its Wi-Fi")),
    "pc": (
        860,
        40,
        220,
        110,
        "GPU PC (backend)",
        ("lalelu-backend service", "NVIDIA GPU, Linux", "port 7600"),
    ),
    "phone": (600, 190, 170, 60, "phone", ("the monitor page",)),
    "laptop": (860, 190, 220, 60, "controller laptop", ("site.yml, fab check",)),
    "midi": (290, 300, 220, 60, "USB MIDI interface", ('default: [output] kind = "midi"',)),
    "module": (600, 300, 170, 60, "drum module", ("MIDI in, channel 10",)),
    "pa": (860, 300, 220, 60, "PA / amplifier", ("the venue's mixer",)),
    "audio": (30, 420, 190, 60, "USB audio interface", ('or [output] kind = "synth"',)),
}
# (from, to, label, dashed): dashed = optional
LINKS: tuple[tuple[str, str, str, bool], ...] = (
    ("camera", "pi", "CSI ribbon", False),
    ("psu", "pi", "USB-C", False),
    ("pi", "switch", "Ethernet", False),
    ("switch", "pc", "Ethernet", False),
    ("laptop", "switch", "LAN (setup)", True),
    ("phone", "switch", "Wi-Fi", True),
    ("pi", "midi", "USB", False),
    ("midi", "module", "MIDI DIN", False),
    ("module", "pa", "audio", False),
    ("pi", "audio", "USB", True),
    ("audio", "pa", "audio (synth)", True),
)


def _anchor(name: str, toward: str) -> tuple[float, float]:
    """The point on box `name`'s edge that faces box `toward`."""
    x, y, w, h = BOXES[name][:4]
    tx, ty, tw, th = BOXES[toward][:4]
    cx, cy, tcx, tcy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    dx, dy = tcx - cx, tcy - cy
    if abs(dx) * h > abs(dy) * w:  # leaves through the left or right side
        return (x + w if dx > 0 else x, cy + dy * (w / 2) / abs(dx))
    return (cx + dx * (h / 2) / abs(dy), y + h if dy > 0 else y)


def draw() -> str:
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="1110" height="530" viewBox="0 0 1110 530" '
        'font-family="sans-serif" font-size="13">',
        '<rect width="1110" height="530" fill="#ffffff"/>',
        '<text x="30" y="30" font-size="16" font-weight="bold">lalelu drums at a gig: what plugs into what'
        "</text>",
        '<text x="30" y="515" fill="#555">solid: needed; dashed: optional (setup laptop, phones, the built-in '
        "synth instead of MIDI). Drawn by tools/draw_wiring.py.</text>",
    ]
    labels = []
    for a, b, label, dashed in LINKS:
        (x1, y1), (x2, y2) = _anchor(a, b), _anchor(b, a)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(
            f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#333" stroke-width="2"{dash}/>'
        )
        # a white halo keeps the label readable over its line; labels go over everything
        labels.append(
            f'<text x="{(x1 + x2) / 2:.0f}" y="{(y1 + y2) / 2 + 4:.0f}" text-anchor="middle" fill="#a33" '
            f'stroke="#ffffff" stroke-width="4" paint-order="stroke">{escape(label)}</text>'
        )
    for x, y, w, h, title, lines in BOXES.values():
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="#eef3fb" stroke="#335"/>')
        parts.append(f'<text x="{x + 10}" y="{y + 20}" font-weight="bold">{escape(title)}</text>')
        for i, line in enumerate(lines):
            parts.append(f'<text x="{x + 10}" y="{y + 38 + 16 * i}">{escape(line)}</text>')
    parts += labels
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/wiring.svg is not what this draws")
    args = p.parse_args(argv)
    svg = draw()
    if args.check:
        if not OUT.exists() or OUT.read_text() != svg:
            print(
                f"{OUT} is not what tools/draw_wiring.py draws: run it and commit the picture",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(svg)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
