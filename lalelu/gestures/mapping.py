"""The mapping file (TOML): which motions play which notes and controls, checked at load."""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lalelu import schema
from lalelu.errors import ConfigError
from lalelu.keypoints import KEYPOINT_INDEX

log = logging.getLogger("lalelu.gestures")

GM_DRUMS = {"kick": 36, "snare": 38, "closed_hihat": 42, "crash": 49}


@dataclass(frozen=True)
class Zone:
    name: str
    rect: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
    note: int


@dataclass(frozen=True)
class Strike:
    name: str
    keypoint: int
    mode: str = "reversal"  # "reversal": the motion along +axis turns back; "line": crosses `line`
    axis: str = "y"  # y grows downwards, so "y" + reversal is a downward hit
    direction: str = "positive"  # line mode: "positive", "negative" or "both"
    line: float = 0.6
    note: int = GM_DRUMS["snare"]
    min_speed: float = 0.6  # frame sizes per second that arm a strike; slower motion (tremble) never hits
    max_speed: float = 4.0  # speed that gives the top velocity
    velocity: tuple[int, int] = (30, 127)
    curve: float = 1.0  # exponent of the speed -> velocity curve
    rearm: float = 0.03  # travel back (frame fraction) before the next hit
    turn_margin: float = 0.01  # travel back (frame fraction) from the deepest point that counts as the turn
    # "impact": the hit is timed at the stroke's estimated impact, between frames, and sounds [output]
    # latency_ms after it; "turn": it sounds when the turn is seen (the reader before impact timing)
    timing: str = "impact"
    zones: tuple[Zone, ...] = ()


@dataclass(frozen=True)
class Control:
    name: str
    keypoint: int
    axis: str = "y"
    kind: str = "cc"  # "cc" or "pitchbend"
    cc: int = 1
    range: tuple[float, float] = (0.0, 1.0)
    invert: bool = False
    min_interval_ms: float = 10.0


@dataclass(frozen=True)
class Mapping:
    name: str = "default"
    channel: int = 10  # 1..16; 10 is General MIDI percussion
    note_length_ms: float = 50.0
    min_score: float = 0.3
    smoothing_min_cutoff_hz: float = 10.0
    smoothing_beta: float = 1.0
    strikes: tuple[Strike, ...] = ()
    controls: tuple[Control, ...] = field(default_factory=tuple)


class _Reader:
    """Reads one TOML table, naming the table in every complaint, and rejecting unknown keys."""

    def __init__(self, origin: str, where: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {where} must be a table")
        self.origin, self.where, self.table = origin, where, dict(table)

    def _where(self, key: str) -> str:
        return f"{self.origin}: {self.where} {key}"

    def fail(self, key: str, value: Any, why: str) -> ConfigError:
        return schema.wrong(self._where(key), value, why)

    def num(self, key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
        return schema.number(self._where(key), self.table.pop(key, default), lo, hi, integer)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        return str(schema.choice(self._where(key), self.table.pop(key, default), choices))

    def text(self, key: str, default: str | None = None) -> str:
        v = self.table.pop(key, default)
        if not isinstance(v, str):
            raise self.fail(key, v, "must be a string" if v is not None else "is missing")
        return v

    def keypoint(self) -> int:
        name = self.text("keypoint", None)
        if name not in KEYPOINT_INDEX:
            raise self.fail("keypoint", name, f"is not a keypoint: use one of {', '.join(KEYPOINT_INDEX)}")
        return KEYPOINT_INDEX[name]

    def pair(self, key: str, default: tuple, lo: float, hi: float, integer: bool = False) -> tuple:
        v = self.table.pop(key, list(default))
        ok = (
            isinstance(v, list)
            and len(v) == 2
            and all(isinstance(x, int if integer else int | float) and not isinstance(x, bool) for x in v)
        )
        if not ok or not (lo <= v[0] < v[1] <= hi):
            raise self.fail(key, v, f"must be [low, high] with {lo} <= low < high <= {hi}")
        return (v[0], v[1])

    def done(self) -> None:
        if self.table:
            raise ConfigError(f"{self.origin}: unknown key {self.where} {', '.join(self.table)}")


def _note(r: _Reader, default: int) -> int:
    v = r.table.get("note", default)
    if isinstance(v, str) and v in GM_DRUMS:
        r.table.pop("note")
        return GM_DRUMS[v]
    return int(r.num("note", default, 0, 127, integer=True))


def mapping_from_dict(data: dict[str, Any], origin: str = "mapping") -> Mapping:
    top = _Reader(origin, "", data)
    inst = _Reader(origin, "[instrument]", top.table.pop("instrument", {}))
    smooth = _Reader(origin, "[smoothing]", top.table.pop("smoothing", {}))
    strikes_raw = top.table.pop("strike", [])
    controls_raw = top.table.pop("control", [])
    top.done()
    strikes = []
    for i, raw in enumerate(strikes_raw):
        r = _Reader(origin, f"[[strike]] #{i + 1}", raw)
        if isinstance(raw, dict) and "compensate_ms" in raw:
            raise r.fail(
                "compensate_ms",
                raw["compensate_ms"],
                "is gone: hits are now timed at the stroke's estimated impact and sound [output] latency_ms "
                'after it; delete the key (timing = "turn" gives the old reader)',
            )
        name = r.text("name", f"strike{i + 1}")
        kp = r.keypoint()
        note = _note(r, GM_DRUMS["snare"])
        zones = []
        for j, z in enumerate(r.table.pop("zones", [])):
            zr = _Reader(origin, f"[[strike]] #{i + 1} zone #{j + 1}", z)
            rect = zr.table.pop("rect", None)
            if not (
                isinstance(rect, list)
                and len(rect) == 4
                and all(isinstance(c, int | float) for c in rect)
                and 0 <= rect[0] < rect[2] <= 1
                and 0 <= rect[1] < rect[3] <= 1
            ):
                raise zr.fail(
                    "rect", rect, "must be [x0, y0, x1, y1], fractions of the frame, x0 < x1, y0 < y1"
                )
            zones.append(Zone(zr.text("name", f"zone{j + 1}"), tuple(rect), _note(zr, note)))
            zr.done()
        s = Strike(
            name=name,
            keypoint=kp,
            note=note,
            mode=r.choice("mode", "reversal", ("reversal", "line")),
            axis=r.choice("axis", "y", ("x", "y")),
            direction=r.choice("direction", "positive", ("positive", "negative", "both")),
            line=r.num("line", 0.6, 0.0, 1.0),
            min_speed=r.num("min_speed", 0.6, 0.01, 100.0),
            max_speed=r.num("max_speed", 4.0, 0.02, 1000.0),
            velocity=r.pair("velocity", (30, 127), 1, 127, integer=True),
            curve=r.num("curve", 1.0, 0.1, 10.0),
            rearm=r.num("rearm", 0.03, 0.0, 1.0),
            turn_margin=r.num("turn_margin", 0.01, 0.0, 0.5),
            timing=r.choice("timing", "impact", ("impact", "turn")),
            zones=tuple(zones),
        )
        if s.max_speed <= s.min_speed:
            raise r.fail("max_speed", s.max_speed, f"must be above min_speed ({s.min_speed})")
        r.done()
        strikes.append(s)
    controls = []
    for i, raw in enumerate(controls_raw):
        r = _Reader(origin, f"[[control]] #{i + 1}", raw)
        controls.append(
            Control(
                name=r.text("name", f"control{i + 1}"),
                keypoint=r.keypoint(),
                axis=r.choice("axis", "y", ("x", "y")),
                kind=r.choice("kind", "cc", ("cc", "pitchbend")),
                cc=r.num("cc", 1, 0, 119, integer=True),
                range=r.pair("range", (0.0, 1.0), 0.0, 1.0),
                invert=bool(r.table.pop("invert", False)),
                min_interval_ms=r.num("min_interval_ms", 10.0, 0.0, 10_000.0),
            )
        )
        r.done()
    m = Mapping(
        name=inst.text("name", "default"),
        channel=inst.num("channel", 10, 1, 16, integer=True),
        note_length_ms=inst.num("note_length_ms", 50.0, 1.0, 10_000.0),
        min_score=inst.num("min_score", 0.3, 0.0, 1.0),
        smoothing_min_cutoff_hz=smooth.num("min_cutoff_hz", 10.0, 0.01, 1000.0),
        smoothing_beta=smooth.num("beta", 1.0, 0.0, 1000.0),
        strikes=tuple(strikes),
        controls=tuple(controls),
    )
    inst.done()
    smooth.done()
    if not m.strikes and not m.controls:
        raise ConfigError(f"{origin}: no [[strike]] or [[control]]: the mapping would play nothing")
    return m


def load_mapping(path: Path) -> Mapping:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read mapping {path}: {exc.strerror}; check --mapping / [output] mapping"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): a mapping is a TOML file; save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return mapping_from_dict(data, str(path))


class MappingFile:
    """A mapping file that may be edited while the instrument plays: read again when its modification
    time changes (looked at once a second at most) or when asked (SIGHUP). A file that no longer loads
    leaves the old mapping playing, with the reason in the log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = os.stat(path).st_mtime_ns
        self._looked_ns = 0

    def changed(self, t_ns: int, asked: bool) -> Mapping | None:
        """The mapping read again, if it changed (or `asked`); else None."""
        if not asked and t_ns - self._looked_ns < 1_000_000_000:
            return None
        self._looked_ns = t_ns
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return None
        if not asked and mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            return load_mapping(self.path)
        except ConfigError as exc:
            log.error("mapping not reloaded, keeping the old one: %s", exc)
            return None
