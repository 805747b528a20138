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
    t_ns: int  # capture time of the pose that fired it
    name: str
    note: int
    velocity: int
    impact_ns: int = 0  # the estimated impact on the capture clock; 0 = none: sound it at once
    decided_ns: int = 0  # when the reader fired it (the pose's arrival)


# Impact timing ("impact"): how a downstroke's impact is estimated, and when the hit is committed.
BRAKE_RATIO = 0.4  # the last interval's speed below this fraction of the stroke's peak: the hand brakes
PREDICT_MIN_SPEED = 1.8  # frame heights a second over SPEED_SPAN_NS: slower strokes are timed by the turn
SPEED_SPAN_NS = 20_000_000  # two intervals at 100 fps
PLANE_SPEED = 0.5  # the plane prediction needs the last two intervals at this fraction of the peak speed
NEAR_PLANE = 0.25  # braking counts within this fraction of the stroke's travel above the learned depth
VERTEX_WINDOW_NS = 160_000_000  # a slow motion's parabola is fitted to at most this much of its track
VERTEX_MIN_FRAMES = 5
VERTEX_MAX_SPEED = 0.5  # a vertex is believed once the motion is below this fraction of its peak speed
HISTORY = 40  # raw positions kept per strike: the vertex window (160 ms) at 240 fps
HORIZON_FRAMES = 3.0  # a prediction further ahead than this many frames is not trusted
COMMIT_GUARD_NS = 1_000_000  # the next pose must arrive this long before the sound is due to wait for it
LOST_GRACE_NS = 100_000_000  # a keypoint missing this long loses its stroke; shorter gaps are bridged
LEARN_RATE = 0.3  # how fast the impact plane and the prediction's bias follow the player
TURN_FRAMES = 2  # frames in a row moving back that make a turn
TURN_BRAKED = 0.25  # one frame back is the turn once the stroke slowed below this fraction of its peak
TURN_JUMP = 3.0  # one frame this many turn margins back from the deepest point is a turn (no jitter is)


class _StrikeState:
    __slots__ = (
        "arm_t",
        "armed",
        "back_frames",
        "bias_ns",
        "committed",
        "depth",
        "filt",
        "hit",
        "learned",
        "lost_ns",
        "n",
        "peak",
        "peak2",
        "pending_ns",
        "pending_plane_ns",
        "plane_pred_ns",
        "pos",
        "raw",
        "ready",
        "ref",
        "start",
        "t",
        "top",
        "top_t",
        "top_t_depth",
        "ts",
        "ys",
    )

    def __init__(self, m: Mapping) -> None:
        self.filt = OneEuro(m.smoothing_min_cutoff_hz, m.smoothing_beta)
        self.ys = [0.0] * HISTORY  # the last raw positions, oldest first
        self.ts = [0] * HISTORY
        # What the reader has learned of the player survives a lost keypoint: the depth of the impact
        # plane, and how far its plane prediction was off.
        self.depth = 0.0
        self.learned = 0
        self.bias_ns = 0
        self.reset()

    def reset(self) -> None:
        self.filt.reset()
        self.t = -1
        self.n = 0
        self.pos = self.peak = self.peak2 = self.raw = self.top = self.start = 0.0
        self.top_t = 0
        self.top_t_depth = 0.0  # the depth reached at top_t
        self.arm_t = 0  # when the stroke armed: the vertex fit uses only its own frames
        self.armed = False  # moving fast enough along the strike direction
        self.ready = False  # re-armed: travelled back or came to rest since the last hit / since it came back
        self.ref = 0.0  # position the re-arm travel is measured from
        self.hit = False  # the last event was a hit: only travelling back re-arms, not a pause
        self.committed = False  # impact timing: this stroke's hit is out, the turn is awaited to learn
        self.plane_pred_ns = 0  # the plane prediction (without bias) at the commit, for learning
        # The last prediction made while the reader could still wait: it stands when the next frames,
        # at the lowest point, show neither braking nor the turn yet (200 fps: steps below the model's).
        self.pending_ns = 0
        self.pending_plane_ns = 0
        self.lost_ns = 0
        self.back_frames = 0  # frames in a row moving back from the deepest point


class _ControlState:
    __slots__ = ("last_t", "last_value")

    def __init__(self) -> None:
        self.last_value = -1
        self.last_t = -(10**18)


class GestureReader:
    """Strikes fire through `on_hit`, controls through `on_control`.

    A strike with `timing = "impact"` (the default) estimates when its stroke lands, between frames, and
    fires as late as it can while the sound, due at that moment plus the output's latency, is still on
    time: it waits for the next pose whenever that pose would arrive before the sound is due. The impact
    comes, in order of preference, from
    - the turn, once it is seen (two frames moving back, or one after the stroke braked): where the
      velocity crosses zero around the deepest frame;
    - the braking (the last interval's speed fell below BRAKE_RATIO of the stroke's): the velocity
      extrapolated linearly to zero, the acceleration peak before the onset (Dahl, NIME 2014);
    - the impact plane: a player's strokes end at about the same depth. After each stroke the reader
      learns that depth and the error of its own time-to-plane prediction, and predicts the next impact
      from the distance left and the speed of the last two intervals.
    `timing = "turn"` is the reader before impact timing: it fires when the turn is seen, at once.

    One class though long (~410 lines): every strike and control reads the same per-pose timing (the
    capture-to-pose delay, the frame interval) and the learned impact planes, updated in one order per
    pose; the three impact estimates above are alternatives of one decision, kept side by side so that
    their order of preference is read in one place.
    """

    def __init__(
        self,
        mapping: Mapping,
        width: int,
        height: int,
        on_hit: Callable[[Hit], None],
        on_control: Callable[[Control, int, int], None],
        latency_ns: int = 0,
    ) -> None:
        self.mapping = mapping
        self.width, self.height = width, height
        self.on_hit, self.on_control = on_hit, on_control
        self.latency_ns = latency_ns  # [output] latency_ms: the sound is due this long after the impact
        self.delay_ns = 0  # capture-to-pose delay, a peak that decays: the next pose arrives this late
        self.frame_ns = 0  # the frame interval, a peak that decays (a skipped frame lengthens it once)
        self._last_t = -1
        self._now = 0
        self._strikes = [(s, _StrikeState(mapping)) for s in mapping.strikes]
        self._controls = [(c, _ControlState()) for c in mapping.controls]

    def update(self, t_ns: int, keypoints: np.ndarray, arrival_ns: int = 0) -> None:
        """keypoints: (17, 3) rows (x, y, score) in frame pixels, captured at t_ns, here at arrival_ns
        (0: at once, as in an offline replay without arrival times)."""
        now = arrival_ns or t_ns
        self._now = now
        delay = now - t_ns
        # Peaks that decay by 1 % a pose: one slow pose raises them at once, a spike fades in ~100 poses.
        self.delay_ns = max(delay, self.delay_ns - self.delay_ns // 100)
        if self._last_t >= 0 and t_ns > self._last_t:
            gap = t_ns - self._last_t
            self.frame_ns = (
                gap
                if self.frame_ns == 0
                else min(max(gap, self.frame_ns - self.frame_ns // 100), 2 * self.frame_ns)
            )
        self._last_t = t_ns
        min_score = self.mapping.min_score
        for strike, st in self._strikes:
            x, y, score = keypoints[strike.keypoint]
            if not score >= min_score:  # NaN too
                if st.t >= 0:
                    if strike.timing == "turn":
                        st.reset()  # lost: it must re-arm after it comes back
                    elif st.lost_ns == 0:
                        st.lost_ns = t_ns
                    elif t_ns - st.lost_ns > LOST_GRACE_NS:
                        st.reset()
                continue
            st.lost_ns = 0
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
            for i in range(HISTORY):
                st.ys[i], st.ts[i] = raw, t_ns
            st.n = 1
            return
        dt = (t_ns - st.t) * 1e-9
        if dt <= 0:
            return
        v = (p - st.pos) / dt
        prev = st.pos
        del st.ys[0], st.ts[0]
        st.ys.append(raw)
        st.ts.append(t_ns)
        st.n += 1
        if s.mode == "line":
            st.t, st.pos, st.raw = t_ns, p, raw
            self._update_line(s, st, t_ns, xn, yn, p, prev, v)
            return
        if s.timing == "turn":
            self._update_turn(s, st, t_ns, xn, yn, raw, p, v)
            return
        st.t, st.pos, st.raw = t_ns, p, raw
        if not st.ready:
            st.ref = max(st.ref, p)  # the lowest point reached since the last hit
            if st.committed:
                self._learn_after_commit(s, st, raw, v)
            # Re-armed by travelling back, or by coming to rest (a hand that just appeared, or paused).
            if st.ref - p >= s.rearm or (not st.hit and abs(v) < s.min_speed / 2):
                st.ready, st.hit, st.committed, st.start = True, False, False, raw
            return
        if not st.armed:
            st.start = min(st.start, raw)  # the stroke starts from the highest point since re-arming
        if v >= s.min_speed:
            if not st.armed:
                st.top, st.top_t, st.top_t_depth = raw, t_ns, raw
                st.arm_t = st.ts[-2]
            st.armed = True
            st.peak = max(st.peak, v)
        if not st.armed:
            return
        self._deeper(s, st, raw, t_ns)
        st.top = max(st.top, raw)
        if st.top - st.start < s.rearm:
            # Not yet a stroke: a tremble or the model's jitter. If it turns back, it never was one.
            if v <= 0:
                st.armed, st.peak, st.start, st.pending_ns = False, 0.0, raw, 0
            return
        impact = self._seen_turn(s, st, raw, v)
        if impact == 0:
            impact = self._predicted_impact(st, t_ns)
            if impact == 0:
                return
        self._fire(s, st, t_ns, xn, yn, st.peak, impact)
        st.ref, st.committed = p, True

    @staticmethod
    def _deeper(s: Strike, st: _StrikeState, raw: float, t_ns: int) -> None:
        """When the stroke got this deep: moved on by a quarter margin past the depth it was last moved
        at, so a resting hand's jitter does not move it later, and a slow approach still moves it on
        (compared with the running deepest point, 0.5 px a frame never would: the impact stayed 90 ms
        before the lowest point)."""
        if raw > st.top_t_depth + s.turn_margin / 4:
            st.top_t, st.top_t_depth = t_ns, raw

    def _frame(self, st: _StrikeState) -> int:
        """The frame interval: the reader's running one, or this strike's last before it has one."""
        return self.frame_ns or (st.ts[-1] - st.ts[-2])

    def _plane_ns(self, st: _StrikeState, t_ns: int) -> int:
        """When the stroke reaches the learned plane at the speed of its last two intervals (moving down)."""
        left = st.depth - st.ys[-1]
        if left <= 0:
            return t_ns
        return t_ns + int(left * (st.ts[-1] - st.ts[-3]) / (st.ys[-1] - st.ys[-3]))

    def _seen_turn(self, s: Strike, st: _StrikeState, raw: float, v: float) -> int:
        """The impact once the turn is seen (0: not yet): where the velocity crosses zero between the
        last two intervals' midpoints, or the deepest frame where the turn was slow."""
        ys, ts = st.ys, st.ts
        # Moving back (the smoothed velocity, or the raw track a margin above the deepest point) for
        # TURN_FRAMES frames in a row, by TURN_JUMP margins at once, or for one frame after the stroke
        # braked. At full speed one frame back is the int8 model's jitter as often as a turn: a 2.6-3.9 px
        # step back mid-descent at 200 fps, where a frame moves ~1 px, pulls even the smoothed velocity
        # below zero (a hit a quarter nod early, every nod).
        if not (v <= 0 or raw <= st.top - s.turn_margin):
            st.back_frames = 0
            return 0
        st.back_frames += 1
        if raw > st.top - TURN_JUMP * s.turn_margin:
            # Confirmed: moving back for TURN_FRAMES frames and still going (the model can repeat a
            # step for two frames mid-stroke: 34.7, 30.8, 30.8, then on down to 94 px at 200 fps).
            confirmed = st.back_frames >= TURN_FRAMES and raw < ys[-2]
            if not confirmed:
                # Braked: slow over SPEED_SPAN_NS before it moved back, all of those frames seen (not
                # the history's fill). Mid-stroke, at speed, this is jitter; after braking, the turn.
                back = st.back_frames
                k = self._span_frames(st, back)
                if st.n < k + back + 1 or self._slope(st, k, skip=back) * 1e9 > TURN_BRAKED * st.peak2:
                    return 0
        first = HISTORY - 4
        deepest = max(range(first, HISTORY), key=ys.__getitem__)
        if first < deepest < HISTORY - 1 and st.n >= 4:
            # The velocity changes sign around the deepest frame: it crosses zero between the midpoints
            # of the intervals before and after it.
            va = (ys[deepest] - ys[deepest - 1]) / max(ts[deepest] - ts[deepest - 1], 1)
            vb = (ys[deepest + 1] - ys[deepest]) / max(ts[deepest + 1] - ts[deepest], 1)
            if va > 0 >= vb:
                ma = (ts[deepest - 1] + ts[deepest]) / 2
                mb = (ts[deepest] + ts[deepest + 1]) / 2
                return int(ma + va / (va - vb) * (mb - ma))
        if st.peak2 < PREDICT_MIN_SPEED:  # a slow turn, eased into: the vertex of the fitted parabola
            vertex = self._vertex(st)
            if vertex and st.top_t - 3 * self._frame(st) <= vertex <= ts[-1]:
                return vertex
        return st.top_t

    def _predicted_impact(self, st: _StrikeState, t_ns: int) -> int:
        """The predicted impact if the hit must be committed now to sound on time, else 0."""
        if st.n < 3:
            return 0
        y0, y1, y2 = st.ys[-3], st.ys[-2], st.ys[-1]
        t0, t1, t2 = st.ts[-3], st.ts[-2], st.ts[-1]
        v1 = (y1 - y0) / max(t1 - t0, 1)
        v2 = (y2 - y1) / max(t2 - t1, 1)
        predicted = 0
        # The int8 model moves a keypoint in 1.3-px steps: one interval's speed jumps by half mid-stroke,
        # so braking is read against the smoothed peak, not the interval before.
        peak = st.peak * 1e-9
        frame = self._frame(st)
        speed = (y2 - y0) / max(t2 - t0, 1)
        # The stroke's peak speed over SPEED_SPAN_NS: over two 5-ms intervals (200 fps) one 1.3-px step
        # alone is 1 frame height a second, and a nod would pass for a stroke.
        st.peak2 = max(st.peak2, self._slope(st, self._span_frames(st)) * 1e9)
        if st.peak2 < PREDICT_MIN_SPEED:
            # Too slow for braking to be read from two intervals: the 1.3-px steps and the jitter are as
            # large as a frame's motion (the demo's nod). It eases into its lowest point like a
            # parabola: the vertex of one fitted to the last frames.
            predicted = self._vertex(st)
            if predicted < t_ns - frame:
                return 0  # no vertex, or one behind: the turn will say so
            if speed > VERTEX_MAX_SPEED * st.peak2 * 1e-9:
                return 0  # still near full speed: a vertex this soon is the steps' noise
        # A stalled step mid-stroke looks like braking for one frame: braking is believed only near the
        # depth where this player's strokes land, once one has been seen.
        near_plane = st.learned >= 1 and st.depth - y2 <= max(
            NEAR_PLANE * (st.depth - st.start), peak * frame
        )
        if not predicted:
            if near_plane and 0 < v2 < v1 and v2 <= BRAKE_RATIO * peak:
                m1, m2 = (t0 + t1) / 2, (t1 + t2) / 2
                predicted = int(m2 + v2 * (m2 - m1) / (v1 - v2))
            elif st.learned >= 2 and speed >= PLANE_SPEED * peak:
                # Still near full speed (a stroke, not a nod that eases into its turn): time to the plane.
                predicted = self._plane_ns(st, t_ns) + st.bias_ns
        if predicted - t_ns > HORIZON_FRAMES * frame:
            st.pending_ns = 0  # the stroke goes on: what was predicted before no longer holds
            return 0
        if predicted == 0:
            predicted = st.pending_ns
            if predicted == 0:
                return 0
        else:
            st.pending_ns = predicted
            st.pending_plane_ns = self._plane_ns(st, t_ns) if st.learned >= 2 and y2 > y0 else 0
        # The next pose arrives a frame and a delay from now: wait for it if the sound is not due before.
        if predicted + self.latency_ns >= t_ns + frame + self.delay_ns + COMMIT_GUARD_NS:
            return 0
        st.plane_pred_ns = st.pending_plane_ns
        return max(predicted, t_ns - frame)

    @staticmethod
    def _span_frames(st: _StrikeState, skip: int = 0) -> int:
        """How many positions, the last `skip` left out, cover SPEED_SPAN_NS (at least 3, at most those
        seen): 3 at 100 fps, 5 at 200."""
        ts, last = st.ts, HISTORY - 1 - skip
        k = 3
        while k < min(st.n, HISTORY) - skip and ts[last] - ts[last - k + 1] < SPEED_SPAN_NS:
            k += 1
        return k

    @staticmethod
    def _slope(st: _StrikeState, k: int, skip: int = 0) -> float:
        """The least-squares slope (per ns) of the last k positions: over three evenly spaced frames (100
        fps) the endpoints' difference; over the five of 200 fps the model's steps inside average out
        (the endpoints alone read the 1-Hz nod's 0.9 frame heights a second as 1.9, a stroke's speed)."""
        ys, ts = st.ys, st.ts
        end = HISTORY - skip
        t_mean = y_mean = 0.0
        for i in range(end - k, end):
            t_mean += ts[i] - ts[-1]
            y_mean += ys[i]
        t_mean /= k
        y_mean /= k
        num = den = 0.0
        for i in range(end - k, end):
            dt = ts[i] - ts[-1] - t_mean
            num += dt * (ys[i] - y_mean)
            den += dt * dt
        return num / den if den > 0 else 0.0

    def _vertex(self, st: _StrikeState) -> int:
        """The time of the vertex of a parabola least-squares fitted to the track since the stroke armed
        (at most HISTORY frames and VERTEX_WINDOW_NS), if it opens downwards the strike's way; else 0."""
        ys, ts = st.ys, st.ts
        t_last = ts[-1]
        k = min(st.n, HISTORY)
        s0 = s1 = s2 = s3 = s4 = sy = sty = stty = 0.0
        used = 0
        for i in range(HISTORY - k, HISTORY):
            if t_last - ts[i] > VERTEX_WINDOW_NS or ts[i] < st.arm_t:
                continue
            tau = (ts[i] - t_last) * 1e-9
            y = ys[i]
            tt = tau * tau
            s0 += 1.0
            s1 += tau
            s2 += tt
            s3 += tt * tau
            s4 += tt * tt
            sy += y
            sty += tau * y
            stty += tt * y
            used += 1
        if used < VERTEX_MIN_FRAMES:
            return 0
        # Normal equations of y = a + b tau + c tau^2, by Cramer's rule for b and c.
        det = s0 * (s2 * s4 - s3 * s3) - s1 * (s1 * s4 - s2 * s3) + s2 * (s1 * s3 - s2 * s2)
        if det == 0:
            return 0
        b = (s0 * (sty * s4 - s3 * stty) - sy * (s1 * s4 - s2 * s3) + s2 * (s1 * stty - sty * s2)) / det
        c = (s0 * (s2 * stty - sty * s3) - s1 * (s1 * stty - sty * s2) + sy * (s1 * s3 - s2 * s2)) / det
        if c >= 0:
            return 0  # not easing into a lowest point
        return t_last + int(-b / (2 * c) * 1e9)

    def _learn_after_commit(self, s: Strike, st: _StrikeState, raw: float, v: float) -> None:
        """After a committed hit, the turn tells where and when this stroke really landed: the impact
        plane's depth and the plane prediction's error follow it."""
        if raw > st.top:
            self._deeper(s, st, raw, st.ts[-1])
            st.top = raw
            return
        impact = self._seen_turn(s, st, raw, v)
        if impact == 0:
            return
        st.committed = False
        st.depth = st.top if st.learned == 0 else st.depth + LEARN_RATE * (st.top - st.depth)
        error = impact - st.plane_pred_ns
        if st.plane_pred_ns and abs(error) < HORIZON_FRAMES * self._frame(
            st
        ):  # a stroke read wrongly teaches nothing
            st.bias_ns = error if st.learned < 2 else int(st.bias_ns + LEARN_RATE * (error - st.bias_ns))
        st.learned += 1

    def _update_turn(
        self,
        s: Strike,
        st: _StrikeState,
        t_ns: int,
        xn: float,
        yn: float,
        raw: float,
        p: float,
        v: float,
    ) -> None:
        """timing = "turn": the reader as it was, firing when it sees the motion come back."""
        st.t, st.pos, st.raw = t_ns, p, raw
        if not st.ready:
            st.ref = max(st.ref, p)
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
        if raw <= st.top - s.turn_margin or v <= 0:
            self._fire(s, st, t_ns, xn, yn, st.peak, 0)
            st.ref = p

    def _update_line(
        self, s: Strike, st: _StrikeState, t_ns: int, xn: float, yn: float, p: float, prev: float, v: float
    ) -> None:
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
        if crossed:
            impact = 0
            if s.timing == "impact":  # the crossing, between the two frames
                t_prev = st.ts[-2]
                impact = int(t_prev + (line - prev) / (p - prev) * (t_ns - t_prev))
            self._fire(s, st, t_ns, xn, yn, abs(v), impact)

    def _fire(
        self, s: Strike, st: _StrikeState, t_ns: int, xn: float, yn: float, speed: float, impact_ns: int
    ) -> None:
        frac = min(1.0, max(0.0, (speed - s.min_speed) / (s.max_speed - s.min_speed)))
        lo, hi = s.velocity
        velocity = round(lo + (hi - lo) * frac**s.curve)
        note = s.note
        for z in s.zones:
            if z.rect[0] <= xn < z.rect[2] and z.rect[1] <= yn < z.rect[3]:
                note = z.note
                break
        st.armed, st.ready, st.peak, st.peak2, st.hit = False, False, 0.0, 0.0, True
        st.pending_ns = st.pending_plane_ns = 0
        st.back_frames = 0
        self.on_hit(Hit(t_ns, s.name, note, velocity, impact_ns, self._now))

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
