"""The built-in drum sound: a General MIDI drum kit played by FluidSynth (libfluidsynth through pyfluidsynth).

Live, FluidSynth's own audio driver (PipeWire, PulseAudio, JACK or ALSA) calls `BlockScheduler.render` for
every period, and the scheduler renders the synth in slices: a note due at monotonic time T starts on the
FluidSynth block (64 frames, 1.3 ms at 48 kHz) nearest to the sample rendered at T. FluidSynth applies
events only at the start of a block, so that is as close as it gets (within half a block; the WAV
renderer, `render.py`, mixes one-shots at the exact sample instead). The sound leaves the card the
driver's buffer (periods x period size) after it is rendered: a constant.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lalelu.clock import now_ns
from lalelu.closing import Closing
from lalelu.config import OutputConfig
from lalelu.output import OutputError

log = logging.getLogger("lalelu.sound")

SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
# default-GM.sf2 is Debian's alternatives link to whichever GM SoundFont is installed.
DEBIAN_SOUNDFONTS = ("default-GM.sf2", "FluidR3_GM.sf2", "TimGM6mb.sf2")
# Tried in this order by "auto": the sound servers first (they share the card with the desktop), then
# JACK where one runs, then the card itself.
AUTO_DRIVERS = ("pipewire", "pulseaudio", "jack", "alsa")
DRUM_BANK = 128  # the SoundFont bank that holds the percussion kits
BLOCK = 64  # FluidSynth renders, and applies events, in blocks of this many frames
# The render clock: the earliest of the last CLOCK_WINDOW periods' (call time - frames rendered / rate).
# A driver calls late, never early, so the earliest is the steady one; a window, not all time, so that
# the clock follows the card's drift and settles again after an xrun.
CLOCK_WINDOW = 64
MAX_QUEUED = 512  # notes waiting for their block; more means the loop schedules faster than it plays
NOTE_ON, NOTE_OFF, ALL_OFF = 0, 1, 2
# int fluid_audio_func_t(void *data, int len, int nfx, float *fx[], int nout, float *out[])
AUDIO_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_void_p),
)


def load_fluidsynth() -> Any:
    try:
        # pyfluidsynth 1.4 prints where it found the library to stdout when the environment has CI set;
        # stdout carries the commands' JSON lines
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except ModuleNotFoundError as exc:
        raise OutputError(
            "the synth needs pyfluidsynth: pip install 'lalelu-drums[edge]' (and apt install libfluidsynth3)"
        ) from exc
    except ImportError as exc:  # pyfluidsynth is there, the C library is not
        raise OutputError(
            f"the synth needs the FluidSynth library ({exc}): apt install libfluidsynth3"
        ) from exc
    return fluidsynth


def find_soundfont(name: str) -> Path:
    """The SoundFont `[output] synth_soundfont` names, or the first General MIDI one Debian installed."""
    if name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise OutputError(
                f"SoundFont {name} not found: fix [output] synth_soundfont, or leave it empty for Debian's "
                "General MIDI SoundFont (apt install timgm6mb-soundfont)"
            )
        return path
    for candidate in DEBIAN_SOUNDFONTS:
        if (SOUNDFONT_DIR / candidate).is_file():
            return SOUNDFONT_DIR / candidate
    raise OutputError(
        f"no General MIDI SoundFont in {SOUNDFONT_DIR}: apt install timgm6mb-soundfont (small) or "
        "fluid-soundfont-gm (larger), or name a .sf2 file in [output] synth_soundfont"
    )


def drum_synth(soundfont: Path, sample_rate: int, gain: float, **settings: Any) -> Any:
    """A FluidSynth synth with the SoundFont's drum kit on every channel, dry (no reverb, no chorus: the
    room adds its own, and both only lengthen the tail)."""
    fluidsynth = load_fluidsynth()
    synth = fluidsynth.Synth(
        gain=gain,
        samplerate=sample_rate,
        channels=16,
        **{"synth.reverb.active": 0, "synth.chorus.active": 0, **settings},
    )
    sfid = synth.sfload(str(soundfont))
    if sfid < 0:
        synth.delete()
        raise OutputError(f"{soundfont} is not a SoundFont FluidSynth can load: name a .sf2 file")
    for channel in range(16):
        if synth.program_select(channel, sfid, DRUM_BANK, 0) != 0:
            synth.delete()
            raise OutputError(f"{soundfont} has no drum kit (bank {DRUM_BANK}, preset 0): use a GM SoundFont")
    return synth


def _libfluidsynth(fluidsynth: Any) -> Any:
    """The C library pyfluidsynth loaded, with the two entry points it does not wrap declared."""
    lib = fluidsynth._fl
    lib.new_fluid_audio_driver2.restype = ctypes.c_void_p
    lib.new_fluid_audio_driver2.argtypes = [ctypes.c_void_p, AUDIO_FUNC, ctypes.c_void_p]
    lib.fluid_synth_process.restype = ctypes.c_int
    lib.fluid_synth_process.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    return lib


class BlockScheduler:
    """Plays notes on the FluidSynth block nearest their due time, from inside the audio callback.

    The loop queues (due, event) through a deque (appends and pops are atomic); `render` places each on
    the sample clock it keeps from its own call times, renders the synth up to that block, applies the
    event and renders on. A note's events keep the order they were given: a note-off never starts
    before its note-on, however the two were timed. An event due in the past starts on the next block.
    """

    def __init__(self, synth: Any, lib: Any, sample_rate: int, clock: Callable[[], int] = now_ns) -> None:
        self.synth = synth
        self._lib = lib
        self._handle = synth.synth
        self.rate = sample_rate
        self._clock = clock
        self._incoming: collections.deque[tuple[int, int, int, int, int]] = collections.deque()
        self._pending: list[tuple[int, int, int, int, int]] = []  # (frame, kind, channel, note, velocity)
        self._last_frame: dict[tuple[int, int], int] = {}  # touched by `render` only
        self._starts = np.zeros(CLOCK_WINDOW, np.int64)
        self._calls = 0
        self.frames = 0  # rendered since the start; FluidSynth's own block grid counts from the same 0
        self.late = 0  # events whose block had passed when they were seen (they start on the next one)
        self._out_slices: dict[int, Any] = {}
        self._fx_slices: dict[int, Any] = {}
        self.error: BaseException | None = None  # the first exception in `render` (it plays silence then)

    def queue(self, kind: int, channel: int, note: int, velocity: int = 0, at_ns: int = 0) -> None:
        if len(self._incoming) < MAX_QUEUED:
            self._incoming.append((at_ns, kind, channel, note, velocity))

    def frame_at(self, at_ns: int) -> int:
        """The frame rendered at monotonic time `at_ns` on the render clock."""
        origin = int(self._starts[: min(self._calls, CLOCK_WINDOW)].min())
        return (at_ns - origin) * self.rate // 1_000_000_000

    @staticmethod
    def _slice(cache: dict[int, Any], count: int, pointers: Any, offset: int) -> Any:
        """A float*[count] of `pointers` moved `offset` frames on, reused from call to call."""
        array = cache.get(count)
        if array is None:
            array = cache[count] = (ctypes.c_void_p * count)()
        for i in range(count):
            array[i] = pointers[i] + 4 * offset
        return array

    def _process(self, start: int, length: int, nfx: int, fx_in: Any, nout: int, out_in: Any) -> None:
        """Render `length` frames into the driver's buffers from frame `start` of this period on."""
        if length <= 0:
            return
        out = self._slice(self._out_slices, nout, out_in, start)
        # No effect buffers from the driver: the effects (off here) mix into the dry ones.
        fx = self._slice(self._fx_slices, nfx, fx_in, start) if nfx else out
        self._lib.fluid_synth_process(
            self._handle, length, nfx if nfx else nout, ctypes.addressof(fx), nout, ctypes.addressof(out)
        )

    def callback(self, data: Any, length: int, nfx: int, fx: Any, nout: int, out: Any) -> int:
        try:
            return self.render(length, nfx, fx, nout, out)
        except Exception as exc:  # raised into C it would only print; kept for close() to report
            if self.error is None:
                self.error = exc
            return 0

    def render(self, length: int, nfx: int, fx: Any, nout: int, out: Any) -> int:
        """FluidSynth's fluid_audio_func_t: fill `out` (zeroed by the driver) with the next `length`
        frames. `fx` and `out` hold float* addresses (ints); `fx` may be empty."""
        now = self._clock()
        self._starts[self._calls % CLOCK_WINDOW] = now - self.frames * 1_000_000_000 // self.rate
        self._calls += 1
        if not fx:
            nfx = 0
        first, end = self.frames, self.frames + length
        while self._incoming:
            at_ns, kind, channel, note, velocity = self._incoming.popleft()
            frame = self.frame_at(at_ns) if at_ns else first
            frame = (frame + BLOCK // 2) // BLOCK * BLOCK  # the nearest block
            if kind == ALL_OFF:
                frame = max(frame, *self._last_frame.values(), first)
            else:
                frame = max(frame, self._last_frame.get((channel, note), 0))
                self._last_frame[(channel, note)] = frame
            if frame < first and at_ns:
                self.late += 1
            self._pending.append((frame, kind, channel, note, velocity))
        done = 0
        if self._pending:
            self._pending.sort(key=_frame_of)
            kept = 0
            for event in self._pending:
                if event[0] >= end:
                    self._pending[kept] = event
                    kept += 1
                    continue
                at = max(event[0] - first, done)
                self._process(done, at - done, nfx, fx, nout, out)
                done = at
                self._apply(event)
            del self._pending[kept:]
        self._process(done, length - done, nfx, fx, nout, out)
        self.frames = end
        return 0

    def _apply(self, event: tuple[int, int, int, int, int]) -> None:
        _, kind, channel, note, velocity = event
        if kind == NOTE_ON:
            self.synth.noteon(channel, note, velocity)
        elif kind == NOTE_OFF:
            self.synth.noteoff(channel, note)
        else:
            for ch in range(16):
                self.synth.all_notes_off(ch)


def _frame_of(event: tuple[int, int, int, int, int]) -> int:
    return event[0]


class SynthOutput(Closing):
    """Hits as notes of FluidSynth's drum kit, heard through the host's sound system."""

    def __init__(
        self,
        soundfont: Path,
        driver: str = "auto",
        device: str = "",
        sample_rate: int = 48000,
        period_size: int = 64,
        periods: int = 2,
        gain: float = 1.0,
        client_name: str = "lalelu",
    ) -> None:
        fluidsynth = load_fluidsynth()
        lib = _libfluidsynth(fluidsynth)
        self.synth = drum_synth(
            soundfont,
            sample_rate,
            gain,
            **{"audio.period-size": period_size, "audio.periods": periods},
        )
        self.scheduler = BlockScheduler(self.synth, lib, sample_rate)
        self._callback = AUDIO_FUNC(self.scheduler.callback)  # kept alive as long as the driver
        self.soundfont = soundfont
        self.driver = ""
        tried = []
        for name in AUTO_DRIVERS if driver == "auto" else (driver,):
            self.synth.setting("audio.driver", name)
            if name == "alsa" and device:
                self.synth.setting("audio.alsa.device", device)
            if name == "jack":
                self.synth.setting("audio.jack.id", client_name)
                self.synth.setting("audio.jack.autoconnect", 1)  # to the system's playback ports
            handle = lib.new_fluid_audio_driver2(self.synth.settings, self._callback, None)
            if handle:
                self.synth.audio_driver = handle  # Synth.delete() closes it first
                self.driver = name
                break
            tried.append(name)
        if not self.driver:
            self.synth.delete()
            raise OutputError(
                f"the synth could not open an audio output (tried {', '.join(tried)}): plug in the sound "
                "card or start the sound server (PipeWire, PulseAudio or JACK), or set [output] synth_driver "
                'and synth_device (`aplay -l` lists the ALSA cards, e.g. synth_device = "hw:1")'
            )
        log.info(
            "synth: %s through %s, %d frames x %d periods at %d Hz",
            soundfont.name,
            self.driver,
            period_size,
            periods,
            sample_rate,
        )

    @classmethod
    def from_config(cls, cfg: OutputConfig) -> SynthOutput:
        return cls(
            find_soundfont(cfg.synth_soundfont),
            cfg.synth_driver,
            cfg.synth_device,
            cfg.synth_sample_rate,
            cfg.synth_period_size,
            cfg.synth_periods,
            cfg.synth_gain,
        )

    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        self.scheduler.queue(NOTE_ON, channel - 1, note, velocity, at_ns)

    def note_off(self, channel: int, note: int, at_ns: int = 0) -> None:
        self.scheduler.queue(NOTE_OFF, channel - 1, note, 0, at_ns)

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        if kind == "pitchbend":
            self.synth.pitch_bend(channel - 1, value - 8192)  # pyfluidsynth takes the bend around 0
        else:
            self.synth.cc(channel - 1, number, value)

    def all_notes_off(self) -> None:
        # Like MIDI's All Notes Off (sounding notes go to their release), after every note still queued.
        self.scheduler.queue(ALL_OFF, 0, 0)

    def close(self) -> None:
        if self.synth is None:
            return
        self.synth.delete()  # the driver first, so the callback has stopped when the synth goes
        self.synth = None
        if self.scheduler.error is not None:
            log.error("the synth's audio callback failed and played silence: %r", self.scheduler.error)
        if self.scheduler.late:
            log.info("synth: %d notes arrived after their block and started on the next", self.scheduler.late)
