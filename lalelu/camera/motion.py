"""Where the still source's photo is at every moment, and when each stroke lands: the ground truth of the
timing benchmarks.

A motion is the photo's vertical offset y(t) in frame heights (+ = down, 0 = centred) at t seconds after the
first frame, and the times of its impacts: the lowest points, where a downward motion ends.

- `SineMotion`: today's nod, amplitude * sin(2 pi t / period); the impacts are its lowest points.
- `StrokeMotion`: an air drummer's stroke pattern. Each stroke lifts the hand (accent = how high), then the
  downstroke accelerates smoothly to its top speed and brakes to rest in `brake_ms` at the impact, the same
  depth every time (the drum head). After it the hand comes back at once ("quick": a rebound, fastest
  right after the impact) or rests and then lifts slowly ("gentle"). Timing can be humanized (a seeded
  random offset per stroke). The pattern is built once as a dense table over one cycle and repeats.
- `TableMotion`: a CSV file with the header `t_s,y`, interpolated linearly, the last row held after the
  end; its impacts are found in the table (the end of each downward run).

Braking before the impact is what a player's hand does in the air (L. Dahl, NIME 2014: the acceleration
peak comes before the intended onset, the direction change after it), and what the gesture reader reads.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lalelu.config import CameraConfig
from lalelu.errors import ConfigError

TABLE_STEP_S = 0.0002  # 0.2 ms: a frame at 1000 fps still falls between many table rows
MIN_IMPACT_DROP = 0.005  # a downward run shallower than this (frame heights) is no stroke


class Motion(Protocol):
    def offset(self, t_s: float) -> float:
        """The photo's vertical offset at t (frame heights, + = down)."""

    def impacts(self, until_s: float) -> np.ndarray:
        """The impact times (s) up to `until_s`, ascending."""


class SineMotion:
    def __init__(self, period_s: float, amplitude: float) -> None:
        self.period_s, self.amplitude = period_s, amplitude

    def offset(self, t_s: float) -> float:
        return self.amplitude * math.sin(2 * math.pi * t_s / self.period_s)

    def impacts(self, until_s: float) -> np.ndarray:
        return np.arange(0.25 * self.period_s, until_s, self.period_s)


def find_impacts(t: np.ndarray, y: np.ndarray, min_drop: float = MIN_IMPACT_DROP) -> np.ndarray:
    """The times at which a downward run of `y` (rising values) ends, for runs that fell at least
    `min_drop` since the last turn upwards: the first sample of a plateau or of the way back."""
    found: list[float] = []
    top = float(y[0]) if y.size else 0.0  # highest point (smallest y) since the last impact
    going_down = False
    for i in range(1, y.size):
        dy = y[i] - y[i - 1]
        if dy > 0:
            going_down = True
        elif going_down and y[i - 1] - top >= min_drop:
            found.append(float(t[i - 1]))
            going_down, top = False, float(y[i - 1])
        elif dy < 0:
            going_down = False
        top = min(top, float(y[i]))
    if going_down and y.size and y[-1] - top >= min_drop:
        found.append(float(t[-1]))  # the table ends at a lowest point, and holds it
    return np.asarray(found, np.float64)


class TableMotion:
    """y(t) from rows (t_s, y): linear between rows, the first row before the start, the last after the end;
    repeated every `cycle_s` when given (the built-in stroke pattern)."""

    def __init__(self, t_s: np.ndarray, y: np.ndarray, impacts: np.ndarray, cycle_s: float = 0.0) -> None:
        self.t_s, self.y, self._impacts, self.cycle_s = t_s, y, impacts, cycle_s

    @classmethod
    def from_csv(cls, path: Path) -> TableMotion:
        where = f"[camera] still_motion = {str(path)!r}"
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read it ({exc.strerror}); give a CSV file with the header t_s,y, "
                'or "sine" or "strokes"'
            ) from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{where} is not a CSV text file ({exc}): write it as t_s,y rows") from None
        if not rows or [c.strip() for c in rows[0]] != ["t_s", "y"]:
            raise ConfigError(f"{where}: the first line must be the header t_s,y")
        t: list[float] = []
        y: list[float] = []
        for n, row in enumerate(rows[1:], start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                ts, ys = (float(c) for c in row)
            except ValueError:
                raise ConfigError(f"{where}: line {n} {','.join(row)!r} is not two numbers t_s,y") from None
            if not (math.isfinite(ts) and math.isfinite(ys)):
                raise ConfigError(f"{where}: line {n} holds {','.join(row)!r}: only finite numbers")
            if not -1.0 <= ys <= 1.0:
                raise ConfigError(f"{where}: line {n}: y = {ys} moves the photo out of the frame (-1 to 1)")
            if t and ts <= t[-1]:
                raise ConfigError(f"{where}: line {n}: t_s = {ts} does not come after {t[-1]}: sort the rows")
            t.append(ts)
            y.append(ys)
        if len(t) < 2:
            raise ConfigError(f"{where}: needs at least two rows after the header")
        ta, ya = np.asarray(t), np.asarray(y)
        # The impacts of a piecewise-linear path are at its rows: find them on the rows themselves.
        return cls(ta, ya, find_impacts(ta, ya))

    def offset(self, t_s: float) -> float:
        if self.cycle_s:
            t_s %= self.cycle_s
        return float(np.interp(t_s, self.t_s, self.y))

    def impacts(self, until_s: float) -> np.ndarray:
        if not self.cycle_s:
            return self._impacts[self._impacts <= until_s]
        cycles = int(until_s // self.cycle_s) + 1
        every = (self._impacts[None, :] + self.cycle_s * np.arange(cycles)[:, None]).ravel()
        return every[every <= until_s]


@dataclass(frozen=True)
class StrokePattern:
    bpm: float = 120.0
    per_beat: int = 1  # strokes per beat: 4 = sixteenth notes
    depth: float = 0.15  # the impact's offset (frame heights below centre); a full stroke lifts 2 * depth
    accents: tuple[float, ...] = (1.0,)  # lift of each stroke in turn, as a fraction of the full one
    brake_ms: float = 15.0
    back: str = "quick"  # "quick", "gentle", or "mixed" (each stroke picks at random)
    humanize_ms: float = 0.0  # SD of each impact's random offset from the grid
    seed: int = 1
    strokes: int = 64  # strokes in one cycle of the pattern

    @property
    def interval_s(self) -> float:
        return 60.0 / self.bpm / self.per_beat


def _segment(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """0..1 across [t0, t1], clipped."""
    return np.clip((t - t0) / (t1 - t0), 0.0, 1.0) if t1 > t0 else (t >= t1).astype(np.float64)


def stroke_motion(p: StrokePattern) -> TableMotion:
    """The pattern's table over one cycle, and its impacts."""
    rng = np.random.default_rng(p.seed)
    n, interval = p.strokes, p.interval_s
    lead = interval  # the first impact comes one interval after the start: the hand starts at rest, up
    jitter = rng.normal(0.0, p.humanize_ms / 1000, n) if p.humanize_ms else np.zeros(n)
    jitter = np.clip(jitter, -0.3 * interval, 0.3 * interval)
    impacts = lead + interval * np.arange(n) + jitter
    gentle = {"quick": np.zeros(n, bool), "gentle": np.ones(n, bool)}.get(p.back)
    if gentle is None:
        gentle = rng.random(n) < 0.5
    cycle = lead + interval * n
    t = np.arange(0.0, cycle, TABLE_STEP_S)
    y = np.full(t.shape, p.depth)
    lifts = np.asarray([p.accents[k % len(p.accents)] for k in range(n)]) * 2 * p.depth
    prev_impact = impacts[-1] - cycle  # the stroke before the first, one cycle back: the cycle closes
    prev_gentle = bool(gentle[-1])
    # The way back from the cycle's last impact wraps around to the first downstroke: the pattern
    # repeats without a jump.
    wrapped = np.where(t >= impacts[-1], t - cycle, t)
    for k in range(n):
        impact, lift = impacts[k], lifts[k]
        tk = wrapped if k == 0 else t
        gap = impact - prev_impact
        top = p.depth - lift
        # The downstroke takes 40 % of the gap, at most 0.25 s; the braking is the player's, not the
        # tempo's (Dahl), but never more than half the downstroke.
        down = min(0.4 * gap, 0.25)
        brake = min(p.brake_ms / 1000, down / 2)
        start = impact - down
        # The way back from the last impact to the top, before this downstroke starts.
        back_end = start - 0.1 * gap
        if prev_gentle:
            rest = prev_impact + 0.25 * (back_end - prev_impact)
            s = _segment(tk, rest, back_end)
            back = (1 - np.cos(np.pi * s)) / 2
        else:
            s = _segment(tk, prev_impact, back_end)
            back = np.sin(np.pi / 2 * s)  # fastest just after the impact: a rebound
        in_back = (tk >= prev_impact) & (tk < start)
        y[in_back] = p.depth - lift * back[in_back]
        # The downstroke: speed rises smoothly to its top over down - brake, then falls to 0 in brake.
        # Distance = v_top * (down - brake) / 2 + v_top * brake / 2 = v_top * down / 2 = lift.
        v_top = 2 * lift / down
        accel = down - brake
        in_down = (t >= start) & (t < impact)
        u = t[in_down] - start
        s_a = np.clip(u / accel, 0.0, 1.0)
        during_accel = v_top * accel * (s_a - np.sin(np.pi * s_a) / np.pi) / 2
        s_b = np.clip((u - accel) / brake, 0.0, 1.0)
        during_brake = v_top * brake * (s_b + np.sin(np.pi * s_b) / np.pi) / 2
        y[in_down] = top + during_accel + np.where(u > accel, during_brake, 0.0)
        prev_impact, prev_gentle = impact, bool(gentle[k])
    return TableMotion(t, y, impacts, cycle)


def motion_from_config(cfg: CameraConfig) -> Motion:
    """The motion `[camera] still_motion` names."""
    if cfg.still_motion == "sine":
        return SineMotion(cfg.still_period_s, cfg.still_amplitude)
    if cfg.still_motion == "strokes":
        return stroke_motion(
            StrokePattern(
                bpm=cfg.strokes_bpm,
                per_beat=cfg.strokes_per_beat,
                depth=cfg.still_amplitude,
                accents=tuple(cfg.strokes_accents),
                brake_ms=cfg.strokes_brake_ms,
                back=cfg.strokes_back,
                humanize_ms=cfg.strokes_humanize_ms,
                seed=cfg.strokes_seed,
            )
        )
    return TableMotion.from_csv(Path(cfg.still_motion).expanduser())
