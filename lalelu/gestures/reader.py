"""The gesture reader: one `update` per pose, strikes and controls out through a callback sink.

Positions are normalized to the frame (0..1 on each axis, y downwards), speeds are frame sizes per
second. State lives in preallocated per-strike objects; an update creates no containers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lalelu.gestures.filters import OneEuro
from lalelu.gestures.mapping import Control, Mapping, Strike


@dataclass(slots=True)
class Hit:
    t_ns: int  # time of the pose that fired it
    name: str
    note: int
    velocity: int
    early_ns: int  # how far before the predicted impact it fired (latency compensation)


class _StrikeState:
    __slots__ = ("armed", "filt", "hit", "peak", "pos", "raw", "raw_vel", "ready", "ref", "t", "top", "vel")

    def __init__(self, m: Mapping) -> None:
        self.filt = OneEuro(m.smoothing_min_cutoff_hz, m.smoothing_beta)
        self.reset()

    def reset(self) -> None:
        self.filt.reset()
        self.t = -1
        self.pos = self.vel = self.peak = self.raw = self.raw_vel = self.top = 0.0
        self.armed = False  # moving fast enough along the strike direction
        self.ready = False  # re-armed: travelled back or came to rest since the last hit / since it came back
        self.ref = 0.0  # position the re-arm travel is measured from
        self.hit = False  # the last event was a hit: only travelling back re-arms, not a pause


class _ControlState:
    __slots__ = ("last_t", "last_value")

    def __init__(self) -> None:
        self.last_value = -1
        self.last_t = -(10**18)


class GestureReader:
    def __init__(
        self,
        mapping: Mapping,
        width: int,
        height: int,
        on_hit: Callable[[Hit], None],
        on_control: Callable[[Control, int, int], None],
    ) -> None:
        self.mapping = mapping
        self.width, self.height = width, height
        self.on_hit, self.on_control = on_hit, on_control
        self._strikes = [(s, _StrikeState(mapping)) for s in mapping.strikes]
        self._controls = [(c, _ControlState()) for c in mapping.controls]

    def update(self, t_ns: int, keypoints: np.ndarray) -> None:
        """keypoints: (17, 3) rows (x, y, score) in frame pixels."""
        min_score = self.mapping.min_score
        for strike, st in self._strikes:
            x, y, score = keypoints[strike.keypoint]
            if score < min_score:
                if st.t >= 0:
                    st.reset()  # lost: it must re-arm after it comes back
                continue
            self._update_strike(strike, st, t_ns, float(x) / self.width, float(y) / self.height)
        for control, cs in self._controls:
            x, y, score = keypoints[control.keypoint]
            if score >= min_score:
                self._update_control(control, cs, t_ns, float(x) / self.width, float(y) / self.height)

    def _update_strike(self, s: Strike, st: _StrikeState, t_ns: int, xn: float, yn: float) -> None:
        raw = yn if s.axis == "y" else xn
        p = st.filt(raw, t_ns)
        if st.t < 0:
            st.t, st.pos, st.ref, st.raw = t_ns, p, p, raw
            return
        dt = (t_ns - st.t) * 1e-9
        if dt <= 0:
            return
        v = (p - st.pos) / dt
        # Turn and impact prediction use the raw track: the smoothed one lags by the filter's delay.
        rv = (raw - st.raw) / dt
        ra = (rv - st.raw_vel) / dt
        prev = st.pos
        st.t, st.pos, st.vel, st.raw, st.raw_vel = t_ns, p, v, raw, rv
        if s.mode == "reversal":
            if not st.ready:
                st.ref = max(st.ref, p)  # the lowest point reached since the last hit
                # Re-armed by travelling back, or by coming to rest (a hand that just appeared, or paused).
                if st.ref - p >= s.rearm or (not st.hit and abs(v) < s.min_speed / 2):
                    st.ready, st.hit = True, False
                return
            if v >= s.min_speed:
                if not st.armed:
                    st.top = raw
                st.armed = True
                st.peak = max(st.peak, v)
            if not st.armed:
                return
            # The turn is read off the raw track (the smoothed one lags by the filter's delay), with a
            # margin so that the model's own jitter mid-stroke is not taken for a turn.
            st.top = max(st.top, raw)
            turned = raw <= st.top - s.turn_margin
            early = 0
            v_now = rv + 0.5 * ra * dt  # rv is the mean velocity over the last frame, half a frame old
            if v_now > 0 and ra < 0 and s.compensate_ms > 0:
                to_stop = v_now / -ra  # seconds until the motion stops at this deceleration
                if to_stop * 1000 <= s.compensate_ms:
                    early = int(to_stop * 1e9)
            if turned or v <= 0 or early:
                self._fire(s, st, t_ns, xn, yn, st.peak, early)
                st.ref = p
            return
        # line mode
        line = s.line
        if not st.ready:
            back = (
                (p <= line - s.rearm)
                if s.direction == "positive"
                else (p >= line + s.rearm if s.direction == "negative" else abs(p - line) >= s.rearm)
            )
            if back:
                st.ready = True
            return
        crossed = (prev < line <= p and s.direction != "negative") or (
            prev > line >= p and s.direction != "positive"
        )
        early = 0
        if not crossed and s.compensate_ms > 0 and v != 0:
            to_line = (line - p) / v
            if 0 < to_line * 1000 <= s.compensate_ms:
                moving_ok = (v > 0 and s.direction != "negative") or (v < 0 and s.direction != "positive")
                if moving_ok:
                    crossed, early = True, int(to_line * 1e9)
        if crossed:
            self._fire(s, st, t_ns, xn, yn, abs(v), early)

    def _fire(
        self, s: Strike, st: _StrikeState, t_ns: int, xn: float, yn: float, speed: float, early: int
    ) -> None:
        frac = min(1.0, max(0.0, (speed - s.min_speed) / (s.max_speed - s.min_speed)))
        lo, hi = s.velocity
        velocity = round(lo + (hi - lo) * frac**s.curve)
        note = s.note
        for z in s.zones:
            if z.rect[0] <= xn < z.rect[2] and z.rect[1] <= yn < z.rect[3]:
                note = z.note
                break
        st.armed, st.ready, st.peak, st.hit = False, False, 0.0, True
        self.on_hit(Hit(t_ns, s.name, note, velocity, early))

    def _update_control(self, c: Control, cs: _ControlState, t_ns: int, xn: float, yn: float) -> None:
        coord = yn if c.axis == "y" else xn
        lo, hi = c.range
        frac = min(1.0, max(0.0, (coord - lo) / (hi - lo)))
        if c.invert:
            frac = 1.0 - frac
        value = round(frac * (16383 if c.kind == "pitchbend" else 127))
        if value == cs.last_value or t_ns - cs.last_t < c.min_interval_ms * 1e6:
            return
        cs.last_value, cs.last_t = value, t_ns
        self.on_control(c, value, t_ns)
