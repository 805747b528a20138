"""Strokes as input (the still source's motions) and hits on the beat: the reader on air-drum strokes with the
int8 model's keypoint noise, and the outputs that sound a hit at its impact plus the latency."""

from __future__ import annotations

import contextlib
import math
import queue
import socket
import time

import numpy as np
import pytest

from lalelu.camera.motion import SineMotion, StrokePattern, TableMotion, find_impacts, stroke_motion
from lalelu.errors import ConfigError
from lalelu.gestures.mapping import mapping_from_dict
from lalelu.gestures.reader import GestureReader, Hit
from lalelu.keypoints import KEYPOINT_INDEX

W, H = 320, 240
NOSE = KEYPOINT_INDEX["nose"]


def write_csv(tmp_path, text: str):
    path = tmp_path / "path.csv"
    path.write_text(text)
    return path


def test_csv_motion_interpolates_holds_and_finds_its_impacts(tmp_path):
    path = write_csv(tmp_path, "t_s,y\n0,-0.1\n0.2,0.1\n0.3,0.05\n0.5,-0.1\n0.7,0.12\n")
    m = TableMotion.from_csv(path)
    assert m.offset(0.1) == pytest.approx(0.0)
    assert m.offset(0.25) == pytest.approx(0.075)
    assert m.offset(5.0) == pytest.approx(0.12)  # the last row is held
    assert m.impacts(10).tolist() == pytest.approx([0.2, 0.7])  # where each downward run ends


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("time,y\n0,0\n1,0\n", "the first line must be the header t_s,y"),
        ("t_s,y\n0,0\nx,1\n", "line 3 'x,1' is not two numbers"),
        ("t_s,y\n0,0\n1,nan\n", "only finite numbers"),
        ("t_s,y\n0,0\n1,3\n", "out of the frame"),
        ("t_s,y\n1,0\n0.5,0.1\n", "does not come after 1.0: sort the rows"),
        ("t_s,y\n0,0\n", "at least two rows"),
    ],
)
def test_a_bad_csv_motion_names_the_line_and_the_fix(tmp_path, text, complaint):
    with pytest.raises(ConfigError, match=complaint):
        TableMotion.from_csv(write_csv(tmp_path, text))


def test_a_missing_or_binary_csv_motion_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        TableMotion.from_csv(tmp_path / "nope.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00t_s")
    with pytest.raises(ConfigError, match="is not a CSV text file"):
        TableMotion.from_csv(binary)


def test_stroke_pattern_lands_each_stroke_at_its_impact_and_repeats_without_a_jump():
    p = StrokePattern(bpm=150, accents=(1.0, 0.4), brake_ms=15, back="mixed", humanize_ms=6, seed=4)
    m = stroke_motion(p)
    impacts = m.impacts(2 * m.cycle_s)
    assert impacts.size == 2 * p.strokes
    assert np.all(np.diff(impacts) > 0.5 * p.interval_s)
    # The impact is the lowest point (the drum head's depth), reached at rest; found again in the table.
    for t in impacts[:8]:
        assert m.offset(t) == pytest.approx(p.depth, abs=1e-3)
        assert m.offset(t - 0.004) < m.offset(t)
    assert find_impacts(m.t_s, m.y) == pytest.approx(m.impacts(m.cycle_s - 1e-9), abs=TABLE_ROW)
    t = np.arange(0, 2 * m.cycle_s, 0.001)
    y = np.array([m.offset(x) for x in t])
    assert np.abs(np.diff(y)).max() < 0.02  # 1 ms steps: no jump, not even where the cycle wraps
    # Accents: the soft strokes lift the hand less.
    lifts = [p.depth - y[(t > a - 0.5 * p.interval_s) & (t < a)].min() for a in impacts[2:6]]
    assert lifts[0] > 1.8 * lifts[1] and lifts[2] > 1.8 * lifts[3]


TABLE_ROW = 0.0003


def int8_like(y_px: np.ndarray, seed: int) -> np.ndarray:
    """The bundled int8 model's nose track: 1.31-px steps, about 1.2 px of jitter, now and then a stall."""
    rng = np.random.default_rng(seed)
    noisy = y_px + rng.normal(0, 1.2, y_px.size)
    stalled = rng.random(y_px.size) < 0.08
    noisy[1:][stalled[1:]] = noisy[:-1][stalled[1:]]
    return np.round(noisy / 1.31) * 1.31


def play(motion, seconds: float, fps: float, delay_ms: float, seed: int, lost=None, mapping=None):
    hits: list[Hit] = []
    mapping = mapping or mapping_from_dict(
        {"strike": [{"name": "nod", "keypoint": "nose", "min_speed": 0.3, "max_speed": 2.0, "rearm": 0.05}]}
    )
    reader = GestureReader(mapping, W, H, hits.append, lambda *a: None, latency_ns=10_000_000)
    n = int(seconds * fps)
    y = int8_like(np.array([H / 2 + motion.offset(i / fps) * H for i in range(n)]), seed)
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0], kp[:, 2] = W / 2, 0.9
    for i in range(n):
        t = round(i * 1e9 / fps)
        kp[NOSE, 1] = y[i]
        kp[NOSE, 2] = 0.1 if lost is not None and lost(i) else 0.9
        reader.update(t, kp, t + int(delay_ms * 1e6))
    return hits


@pytest.mark.parametrize("bpm", [60, 120, 200])
@pytest.mark.parametrize("back", ["quick", "gentle"])
def test_one_hit_per_stroke_at_its_impact_never_on_the_way_back(bpm, back):
    m = stroke_motion(StrokePattern(bpm=bpm, back=back, humanize_ms=4, seed=bpm))
    seconds = 16 * 60 / bpm
    hits = play(m, seconds, 100.0, 9.0, seed=bpm)
    hits = [h for h in hits if h.impact_ns / 1e9 < seconds - 0.1]
    impacts = m.impacts(seconds - 0.1)
    assert len(hits) == len(impacts)
    for hit, impact in zip(hits, impacts, strict=True):
        # Each hit belongs to its own stroke: its estimated impact lies nearer to it than to any other
        # (never on the return, which comes half a stroke later), and it fired before the hand was back up
        # (a gentle return rests first: before the plane is learned, its turn is seen as it lifts).
        assert abs(hit.impact_ns / 1e9 - impact) < 0.25 * 60 / bpm
        assert hit.t_ns / 1e9 < impact + 0.3 * 60 / bpm


def test_a_still_hand_and_a_trembling_one_give_no_hit():
    still = play(SineMotion(1.0, 0.0), 5.0, 100.0, 9.0, seed=1)
    tremble = play(SineMotion(0.25, 0.008), 5.0, 100.0, 9.0, seed=2)
    assert still == [] and tremble == []


def test_dropped_keypoints_and_skipped_frames_lose_no_stroke():
    m = stroke_motion(StrokePattern(bpm=120, humanize_ms=4, seed=9))
    impacts = m.impacts(7.9)
    near = {round(t * 100) + k for t in impacts for k in (-2, -1)}  # just before each impact
    hits = play(m, 8.0, 100.0, 9.0, seed=5, lost=lambda i: i in near)
    assert len([h for h in hits if h.impact_ns < 7.9e9]) == len(impacts)
    # The budget's skips: a 200-fps camera of which the reader sees every other frame, and more gaps.
    rng = np.random.default_rng(2)
    gone = set(rng.choice(1600, 200, replace=False).tolist())
    hits = play(m, 8.0, 200.0, 3.0, seed=6, lost=lambda i: i % 2 == 1 or i in gone)
    assert len([h for h in hits if h.impact_ns < 7.9e9]) == len(impacts)


def test_osc_sends_a_hit_due_later_as_a_time_tagged_bundle():
    from pythonosc.osc_bundle import OscBundle

    from lalelu.clock import now_ns
    from lalelu.output.osc import OscOutput

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    out = OscOutput("127.0.0.1", rx.getsockname()[1])
    due = now_ns() + 250_000_000
    wall_due = time.time() + 0.25
    out.note_on(10, 38, 100, "hand", due)
    bundle = OscBundle(rx.recv(1024))
    assert abs(bundle.timestamp - wall_due) < 0.005
    message = next(iter(bundle))
    assert message.address == "/lalelu/hit" and message.params == ["hand", 38, 100]
    out.note_on(10, 36, 90, "now")  # due now: a plain message
    assert rx.recv(1024).startswith(b"/lalelu/hit")
    # A lost backend's all-notes-off, sent at once, is tagged after the hit still due, not before it.
    out.all_notes_off()
    off = OscBundle(rx.recv(1024))
    assert off.timestamp >= bundle.timestamp and next(iter(off)).address == "/lalelu/off"
    out.note_off(10, 36)  # nothing due: at once
    assert rx.recv(1024).startswith(b"/lalelu/off")
    rx.close()


class FrameListener:
    """A JACK client that notes the JACK frame of every MIDI event and of every audio onset it receives."""

    def __init__(self, name: str = "frames") -> None:
        import jack

        self.client = jack.Client(name)
        self.midi = self.client.midi_inports.register("midi_in")
        self.audio = self.client.inports.register("audio_in")
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.onsets: queue.SimpleQueue = queue.SimpleQueue()
        self._silent = 0
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        start = self.client.last_frame_time
        for offset, data in self.midi.incoming_midi_events():
            self.events.put((start + offset, bytes(data)))
        loud = np.flatnonzero(np.abs(self.audio.get_array()) > 1e-4)
        if loud.size == 0:
            self._silent += 1
            return
        if self._silent >= 20:
            self.onsets.put(start + int(loud[0]))
        self._silent = 0

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def take(q: queue.SimpleQueue, n: int, timeout_s: float = 5.0) -> list:
    got, end = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < end:
        with contextlib.suppress(queue.Empty):
            got.append(q.get(timeout=0.05))
    return got


@pytest.mark.process
def test_jack_midi_places_each_note_on_the_frame_it_is_due(jack_server):
    pytest.importorskip("jack", reason="JACK-Client is part of the dev extra")
    from lalelu.clock import now_ns
    from lalelu.output.jack_midi import JackMidiOutput

    listener = FrameListener()
    out = JackMidiOutput(port="frames:midi_in")
    try:
        time.sleep(0.2)
        gaps_ms = [0.0, 7.3, 13.1, 29.9, 31.7]  # none a whole number of JACK periods (2.67 ms)
        t0 = now_ns() + 300_000_000
        for k, gap in enumerate(gaps_ms):
            out.note_on(10, 36 + k, 100, "probe", t0 + round(gap * 1e6))
        events = [e for e in take(listener.events, len(gaps_ms)) if e[1][0] == 0x99]
        assert [e[1][1] for e in events] == [36 + k for k in range(len(gaps_ms))]
        rate = out.rate
        for (frame, _), gap in zip(events, gaps_ms, strict=True):
            # On its frame: the gaps between notes are the scheduled ones to within a frame, however the
            # JACK periods fell.
            # JACK's frame clock is read beside the monotonic one: a preempted reading moves it (0.5 ms
            # seen under load), sent at once the notes would all land within a period of each other.
            assert abs((frame - events[0][0]) - gap / 1e3 * rate) <= rate / 1000
        assert out.late == 0
        # Note-offs sent at once (a lost backend) never reach the receiver before the hit still due.
        before = take(listener.events, 100, timeout_s=0.1)
        out.note_on(10, 40, 100, "probe", now_ns() + 200_000_000)
        out.note_off(10, 40)
        out.note_on(10, 41, 100, "probe", now_ns() + 150_000_000)
        out.all_notes_off()
        later = [e for e in take(listener.events, 100, timeout_s=1.0) if e[1][0] in (0x99, 0x89, 0xB9)]
        order = [(e[1][0], e[1][1]) for e in later]
        assert order.index((0x99, 40)) < order.index((0x89, 40)), (before, order)
        assert order.index((0x99, 41)) < order.index((0x89, 41)) < order.index((0xB9, 123)), order
    finally:
        out.close()
        listener.close()


def test_sine_motion_impacts_are_its_lowest_points():
    m = SineMotion(0.8, 0.15)
    assert m.impacts(2.0).tolist() == pytest.approx([0.2, 1.0, 1.8])
    assert m.offset(0.2) == pytest.approx(0.15)
    assert math.isclose(m.offset(0.6), -0.15)
