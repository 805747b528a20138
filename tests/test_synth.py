"""The built-in synth: FluidSynth with Debian's General MIDI SoundFont, live through a real JACK server and
offline into a WAV whose onsets are found again."""

from __future__ import annotations

import json
import queue
import subprocess
import time

import numpy as np
import pytest
from support import lalelu_cmd, wait_until

from lalelu.cli.wav import detect_onsets, read_wav
from lalelu.config import load_config
from lalelu.errors import ConfigError
from lalelu.gestures.consumer import GestureConsumer
from lalelu.gestures.mapping import load_mapping
from lalelu.gestures.reader import Hit
from lalelu.output import OutputError
from lalelu.output import synth as synth_module
from lalelu.output.render import TimedHit, render_hits
from lalelu.output.synth import SynthOutput, find_soundfont

RATE = 48000
# A groove's worth of hits off FluidSynth's 64-frame grid: kick, snare, closed hi-hat, toms, soft and loud.
PATTERN = [(36, 110), (42, 70), (38, 100), (42, 40), (36, 127), (45, 90), (38, 60), (50, 120), (36, 50)]


def pattern_hits(start_s: float = 0.1) -> list[TimedHit]:
    t, hits = start_s, []
    for i, (note, velocity) in enumerate(PATTERN):
        hits.append(TimedHit(t, 10, note, velocity))
        t += 0.2 + 0.0371 * (i % 4) + 1 / 3 / RATE  # irregular, never on a block or sample boundary
    return hits


def test_wav_has_one_onset_per_hit_within_a_millisecond(tmp_path):
    hits = pattern_hits()
    report = render_hits(hits, tmp_path / "p.wav", find_soundfont(""), note_length_ms=50)
    assert report["hits"] == len(hits) and report["clipped_samples"] == 0
    samples, rate = read_wav(tmp_path / "p.wav")
    assert rate == RATE
    onsets = detect_onsets(samples, rate)
    assert len(onsets) == len(hits)
    errors_ms = (onsets - np.array([h.t_s for h in hits])) * 1e3
    print(f"onset - hit: {np.round(errors_ms, 3).tolist()} ms")
    # The detected onset is the SoundFont sample's first audible sample: never before the hit, within 1 ms.
    assert np.all(errors_ms >= -1 / RATE * 1e3) and np.all(errors_ms < 1.0)


def test_rendering_is_sample_accurate(tmp_path):
    """A hit one sample later starts exactly one sample later: no block grid, no rounding to periods."""
    sf = find_soundfont("")
    starts = []
    for k in range(3):
        path = tmp_path / f"{k}.wav"
        render_hits([TimedHit(0.5 + k / RATE, 10, 38, 100)], path, sf, 50)
        pcm, _ = read_wav(path)
        starts.append(int(np.flatnonzero(np.abs(pcm) > 0)[0]))
    assert starts[1] - starts[0] == 1 and starts[2] - starts[0] == 2


def test_missing_soundfont_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match=r"SoundFont .*nope.sf2 not found: fix \[output\] synth_soundfont"):
        find_soundfont(str(tmp_path / "nope.sf2"))
    monkeypatch.setattr(synth_module, "SOUNDFONT_DIR", tmp_path)  # a system with none installed
    with pytest.raises(OutputError, match="apt install timgm6mb-soundfont"):
        find_soundfont("")
    bad = tmp_path / "bad.sf2"
    bad.write_text("not RIFF")
    with pytest.raises(OutputError, match="is not a SoundFont FluidSynth can load"):
        render_hits([TimedHit(0.1, 10, 36, 100)], tmp_path / "x.wav", bad, 50)


def test_no_audio_device_names_the_fix():
    with pytest.raises(OutputError, match=r"could not open an audio output \(tried alsa\).*synth_device"):
        SynthOutput(find_soundfont(""), driver="alsa", device="hw:97")


def test_synth_settings_are_validated(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[output]\nkind = "synth"\nsynth_driver = "oss"\n')
    with pytest.raises(ConfigError, match="synth_driver = 'oss' is not allowed: choose one of 'auto'"):
        load_config(cfg)
    cfg.write_text('[output]\nkind = "synth"\nsynth_period_size = 4\n')
    with pytest.raises(ConfigError, match="synth_period_size"):
        load_config(cfg)


class RecordingOutput:
    """Stands in for an output: records what the consumer asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def note_on(self, channel, note, velocity, name, at_ns=0):
        self.calls.append(("on", channel, note))

    def note_off(self, channel, note):
        self.calls.append(("off", channel, note))

    def control(self, *args):
        pass

    def all_notes_off(self):
        self.calls.append(("all off",))

    def close(self):
        self.calls.append(("close",))


def recorded_consumer(tmp_path) -> tuple:
    """A consumer of a one-strike mapping (channel 10, note 38, long notes) playing into a RecordingOutput."""
    path = tmp_path / "m.toml"
    path.write_text(
        '[instrument]\nchannel = 10\nnote_length_ms = 10000\n[[strike]]\nkeypoint = "nose"\nnote = 38\n'
    )
    out = RecordingOutput()
    return path, out, GestureConsumer(load_mapping(path), out, 320, 240, path)


def test_every_silencing_path_reaches_the_output(tmp_path):
    """Backend loss (a hole in the pose stream), a mapping reload and shutdown each end what sounds."""
    path, out, consumer = recorded_consumer(tmp_path)
    consumer._hit(Hit(0, "n", 38, 100, 0))
    consumer.all_notes_off()
    assert out.calls[-2:] == [("off", 10, 38), ("all off",)]
    consumer._hit(Hit(0, "n", 38, 100, 0))
    path.write_text('[instrument]\nchannel = 11\n[[strike]]\nkeypoint = "nose"\nnote = 40\n')
    consumer.request_reload()
    consumer.on_pose(0, 0, np.zeros((17, 3), np.float32))
    assert consumer.mapping.channel == 11
    assert out.calls[-1] == ("off", 10, 38)  # on the old channel, before the new mapping plays
    consumer._hit(Hit(0, "n", 40, 100, 0))
    consumer.close()
    assert out.calls[-2:] == [("off", 11, 40), ("close",)]


def test_a_note_struck_again_while_it_sounds_is_ended_first(tmp_path):
    """Two note-ons of one note without a note-off between are a hanging note to a receiver that pairs
    them: the consumer retriggers (note-off, then the new note-on); other notes keep sounding."""
    _path, out, consumer = recorded_consumer(tmp_path)
    consumer._hit(Hit(0, "n", 38, 100, 0))
    consumer._hit(Hit(0, "n", 36, 100, 0))
    consumer._hit(Hit(0, "n", 38, 100, 0))
    assert out.calls == [("on", 10, 38), ("on", 10, 36), ("off", 10, 38), ("on", 10, 38)]
    consumer.close()
    assert sorted(out.calls[4:6]) == [("off", 10, 36), ("off", 10, 38)]


class JackListener:
    """A JACK client with one audio input: reports (wall time of the period, first audible sample) of
    every sound that starts after at least `silent_periods` silent periods."""

    def __init__(self, name: str = "listener", silent_periods: int = 4) -> None:
        import jack

        self.client = jack.Client(name)
        self.port = self.client.inports.register("in")
        self.onsets: queue.SimpleQueue = queue.SimpleQueue()
        self.peak = 0.0
        self._silent = 0
        self.silent_periods = silent_periods
        self.recorded: list[tuple[int, np.ndarray]] | None = None  # (first frame, audio) of each period
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        now = time.monotonic_ns()
        audio = self.port.get_array()
        if self.recorded is not None:
            self.recorded.append((self.client.last_frame_time, audio.copy()))
        loud = np.flatnonzero(np.abs(audio) > 1e-4)
        self.peak = float(np.abs(audio).max())
        if loud.size == 0:
            self._silent += 1
            return
        if self._silent >= self.silent_periods:
            self.onsets.put(now + round(int(loud[0]) / self.client.samplerate * 1e9))
        self._silent = 0

    def silent_for(self, periods: int) -> bool:
        return self._silent >= periods

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.fixture
def synth_and_listener(jack_server):
    pytest.importorskip("jack", reason="JACK-Client is part of the dev extra")
    out = SynthOutput(find_soundfont(""), driver="jack", period_size=64)
    assert out.driver == "jack"
    listener = JackListener()
    listener.client.connect("lalelu:left", f"{listener.client.name}:in")
    yield out, listener
    out.close()
    listener.close()


@pytest.mark.process
def test_synth_plays_through_jack_and_its_latency(synth_and_listener):
    out, listener = synth_and_listener
    latencies, lost = [], 0
    for i in range(30):
        out.synth.all_sounds_off(9)  # cut the last one, so the next starts from silence
        wait_until("silence", lambda: listener.silent_for(6))
        while not listener.onsets.empty():
            listener.onsets.get()
        sent = time.monotonic_ns()
        out.note_on(10, (36, 38, 42)[i % 3], 100, "probe")
        try:
            latencies.append(listener.onsets.get(timeout=0.5) - sent)
        except queue.Empty:
            lost += 1
    ms = np.array(latencies) / 1e6
    print(
        f"synth through JACK (dummy, 48 kHz, jackd 128 frames, FluidSynth 64): note-on to first audible "
        f"sample p50 {np.median(ms):.2f} ms, max {ms.max():.2f} ms, lost {lost} of 30"
    )
    assert lost == 0
    assert np.median(ms) < 20  # a few periods of 128 frames at 48 kHz (2.67 ms each)


@pytest.mark.process
def test_all_notes_off_and_close_silence_the_synth(synth_and_listener):
    """A sustained voice (a looped organ preset: the GM kit's drums all end by themselves) keeps sounding
    while held; all_notes_off releases it, and close leaves JACK silent."""
    out, listener = synth_and_listener
    sfid = out.synth.sfload(str(find_soundfont("")))
    out.synth.program_select(0, sfid, 0, 19)  # church organ on channel 1
    out.note_on(1, 60, 110, "held")
    time.sleep(1.5)
    assert listener.peak > 0.01, "the held note should still sound after 1.5 s"
    out.all_notes_off()
    wait_until("silence after all notes off", lambda: listener.silent_for(20), timeout_s=3)
    out.note_on(1, 60, 110, "held")
    time.sleep(0.3)
    assert listener.peak > 0.01
    out.close()
    assert out.synth is None
    wait_until("silence after close", lambda: listener.silent_for(20), timeout_s=3)


@pytest.mark.process
def test_demo_writes_a_wav_whose_onsets_are_its_hits(tmp_path):
    wav = tmp_path / "demo.wav"
    r = subprocess.run(
        lalelu_cmd("demo", "--seconds", "5", "--quiet", "--wav", str(wav)), capture_output=True, timeout=180
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    result = json.loads(r.stdout.decode().splitlines()[-1])
    timing = result["wav"]["timing"]
    print(f"demo WAV: {json.dumps(result['wav'])}")
    assert wav.exists() and result["wav"]["path"] == str(wav)
    assert timing["onsets"] == timing["hits"] == result["hits"] >= 2  # one onset per hit, the hits it played
    assert timing["render_error_ms"]["max_abs"] < 1.0  # sample-accurate rendering
    assert abs(result["hits"] - result["hits_expected"]) <= 1  # one hit per nod
    # The onsets are timed against the nod's true lowest points (its impacts), past the reader's warm-up.
    vs = timing["vs_impact"]
    assert vs["onsets"] >= 1 and vs["missed"] == 0 and vs["extra"] == 0
    assert result["vs_impact"]["impacts"] == vs["impacts"]


class DriverStandIn:
    """Calls a BlockScheduler the way an audio driver does: `period` frames per call into zeroed float
    buffers, each call late by `jitter_ns[k]` after its period's start on a steady card clock."""

    def __init__(self, scheduler, period: int, t0_ns: int, jitter_ns) -> None:
        self.scheduler, self.period, self.t0 = scheduler, period, t0_ns
        self.jitter = list(jitter_ns)
        self.now = t0_ns
        scheduler._clock = lambda: self.now
        self.audio: list[np.ndarray] = []

    def run(self, calls: int) -> None:
        for _ in range(calls):
            k = len(self.audio)
            self.now = self.t0 + k * self.period * 1_000_000_000 // RATE + self.jitter[k % len(self.jitter)]
            left, right = np.zeros(self.period, np.float32), np.zeros(self.period, np.float32)
            out = [left.ctypes.data, right.ctypes.data]
            assert self.scheduler.render(self.period, 0, [], 2, out) == 0
            self.audio.append(left)

    def first_sound(self) -> int:
        return int(np.flatnonzero(np.abs(np.concatenate(self.audio)) > 0)[0])


def scheduler_and_driver(period: int, jitter_ns=(0,)) -> tuple:
    fluidsynth = synth_module.load_fluidsynth()
    synth = synth_module.drum_synth(find_soundfont(""), RATE, 1.0)
    scheduler = synth_module.BlockScheduler(synth, synth_module._libfluidsynth(fluidsynth), RATE)
    return scheduler, DriverStandIn(scheduler, period, 10**12, jitter_ns)


def at_frame(t0_ns: int, frame: int) -> int:
    return t0_ns + -(-frame * 1_000_000_000 // RATE)  # the first ns whose frame is `frame`


def test_a_scheduled_note_starts_on_the_block_nearest_its_due_frame():
    """Real FluidSynth rendered through the scheduler as a driver would call it, with periods that do and
    do not divide into FluidSynth's 64-frame blocks, calls late by up to 0.4 ms, and the note queued
    ahead or in the period before it is due: it always starts on the block nearest its due frame."""
    scheduler, driver = scheduler_and_driver(256)
    scheduler.queue(synth_module.NOTE_ON, 9, 38, 100, 0)  # at once: where the SoundFont's sample starts
    driver.run(4)
    attack = driver.first_sound()  # the snare's first nonzero sample, from a block's start
    assert attack < synth_module.BLOCK
    rng = np.random.default_rng(5)
    for period in (256, 100, 64, 333):
        for due in (2000, 2016, 2017, 2047, 2048, 3333, 5000):
            for ahead in (True, False):
                jitter = np.concatenate([[0], rng.integers(0, 400_000, 63)])
                scheduler, driver = scheduler_and_driver(period, jitter)
                at_ns = at_frame(driver.t0, due)
                if ahead:
                    scheduler.queue(synth_module.NOTE_ON, 9, 38, 100, at_ns)
                else:  # queued during the period that ends just before the due frame
                    driver.run(due // period - 1)
                    scheduler.queue(synth_module.NOTE_ON, 9, 38, 100, at_ns)
                driver.run(-(-(due + 2 * synth_module.BLOCK) // period) - len(driver.audio) + 1)
                nearest = (due + synth_module.BLOCK // 2) // synth_module.BLOCK * synth_module.BLOCK
                assert driver.first_sound() == nearest + attack, (period, due, ahead)
                assert scheduler.late == 0
                scheduler.synth.delete()


def test_a_note_due_in_the_past_starts_on_the_next_block_and_is_counted_late():
    scheduler, driver = scheduler_and_driver(100)
    driver.run(10)  # 1000 frames rendered
    scheduler.queue(synth_module.NOTE_ON, 9, 38, 100, at_frame(driver.t0, 500))
    driver.run(10)
    assert scheduler.late == 1
    scheduler2, driver2 = scheduler_and_driver(100)
    scheduler2.queue(synth_module.NOTE_ON, 9, 38, 100, 0)
    driver2.run(4)
    # the next block after frame 1000 (where the call that saw it began): 1024
    assert driver.first_sound() == 1024 + driver2.first_sound()
    scheduler.synth.delete()
    scheduler2.synth.delete()


def test_a_note_off_never_starts_before_its_note_on():
    """A held organ note scheduled ahead, then ended 'at once' before it has begun: the note-off waits
    for its note-on, so the note sounds and then releases; overtaken, the organ would sound for ever."""
    scheduler, driver = scheduler_and_driver(128)
    sfid = scheduler.synth.sfload(str(find_soundfont("")))
    scheduler.synth.program_select(0, sfid, 0, 19)  # church organ on channel 1: sustains while held
    scheduler.queue(synth_module.NOTE_ON, 0, 60, 110, at_frame(driver.t0, 4800))
    scheduler.queue(synth_module.NOTE_OFF, 0, 60)
    driver.run(RATE * 2 // 128)
    audio = np.abs(np.concatenate(driver.audio))
    assert 4800 - 32 <= driver.first_sound() < 4800 + 32 + synth_module.BLOCK
    assert audio[-RATE // 4 :].max() < 1e-4, "the organ still sounds: its note-off came first"
    scheduler.synth.delete()


@pytest.mark.process
def test_notes_queued_together_sound_at_their_due_times_through_jack(synth_and_listener):
    """Eight closed hi-hats (short: each ends before the next) handed to the synth at one moment, due 61.7 ms apart: through a real JACK server each
    sounds at its own time (an at-once synth would sound them together), spaced as they were due to
    within a block or two of JACK's jitter on this machine."""
    out, listener = synth_and_listener
    recorded: list[tuple[int, np.ndarray]] = []
    listener.recorded = recorded
    time.sleep(0.3)  # the render clock settles over its first periods
    spacing_ns = 61_700_000
    t0 = time.monotonic_ns() + 100_000_000
    for i in range(8):
        out.note_on(10, 42, 100, "closed hi-hat", t0 + i * spacing_ns)
    # Until the last note and 0.3 s after it are rendered: on a loaded machine JACK's (dummy) clock can
    # fall behind the wall clock, and a fixed sleep cut the recording before the last notes.
    last_frame = out.scheduler.frame_at(t0 + 7 * spacing_ns) + int(0.3 * RATE)
    wait_until("the last note rendered", lambda: out.scheduler.frames > last_frame, timeout_s=20)
    time.sleep(0.05)  # the listener's period of the same frames
    first_frame = recorded[0][0]
    audio = np.zeros(recorded[-1][0] - first_frame + len(recorded[-1][1]), np.float32)
    for frame, block in recorded:
        audio[frame - first_frame : frame - first_frame + len(block)] = block
    onsets = detect_onsets(audio, RATE)
    assert len(onsets) == 8, f"{len(onsets)} onsets for 8 notes: {onsets}"
    gaps_ms = np.diff(onsets) * 1e3
    print(f"synth through JACK, notes due 61.7 ms apart: onset gaps {np.round(gaps_ms, 2).tolist()} ms")
    assert np.all(np.abs(gaps_ms - spacing_ns / 1e6) < 5.0), gaps_ms
