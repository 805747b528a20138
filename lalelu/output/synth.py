"""The built-in drum sound: a General MIDI drum kit played by FluidSynth (libfluidsynth through pyfluidsynth).

Live, FluidSynth's own audio driver renders in its audio thread (PipeWire, PulseAudio, JACK or ALSA). A hit sounds
when the reader fires it (the live synth does not yet schedule a hit for its impact + latency; the WAV
renderer, `render.py`, places every hit at its exact sample).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

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


class SynthOutput:
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
        self.synth = drum_synth(
            soundfont,
            sample_rate,
            gain,
            **{"audio.period-size": period_size, "audio.periods": periods},
        )
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
            handle = fluidsynth.new_fluid_audio_driver(self.synth.settings, self.synth.synth)
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
        # Sounds at once: scheduling on FluidSynth's sequencer was tried and not kept (README).
        self.synth.noteon(channel - 1, note, velocity)

    def note_off(self, channel: int, note: int) -> None:
        self.synth.noteoff(channel - 1, note)

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        if kind == "pitchbend":
            self.synth.pitch_bend(channel - 1, value - 8192)  # pyfluidsynth takes the bend around 0
        else:
            self.synth.cc(channel - 1, number, value)

    def all_notes_off(self) -> None:
        for channel in range(16):  # like MIDI's All Notes Off: sounding notes go to their release
            self.synth.all_notes_off(channel)

    def close(self) -> None:
        if self.synth is None:
            return
        self.all_notes_off()
        self.synth.delete()
        self.synth = None
