"""Where hits and controls leave: the one interface every output implements, and the factory that opens
the one `[output] kind` names. MIDI (ALSA through python-rtmidi, or JACK as a client of its own), OSC over
UDP, the built-in synth (FluidSynth), or a log.

`note_on(..., at_ns)` asks for the note at monotonic time `at_ns` (0 or past: now): the hit's estimated
impact plus [output] latency_ms. JACK MIDI places it on its JACK frame, OSC sends a bundle time-tagged
with it; ALSA MIDI (rtmidi has no timed send), the log and the synth send at once.
"""

from __future__ import annotations

from typing import Protocol, Self

from lalelu.config import OutputConfig
from lalelu.errors import LaleluError


class OutputError(LaleluError):
    pass


class SoundOutput(Protocol):
    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None: ...

    def note_off(self, channel: int, note: int) -> None: ...

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None: ...

    def all_notes_off(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def open_output(cfg: OutputConfig) -> SoundOutput:
    if cfg.kind == "midi" and cfg.midi_api == "jack":
        from lalelu.output.jack_midi import JackMidiOutput

        return JackMidiOutput(cfg.midi_port, cfg.midi_virtual)
    if cfg.kind == "midi":
        from lalelu.output.midi import MidiOutput

        return MidiOutput(cfg.midi_port, cfg.midi_api, cfg.midi_virtual)
    if cfg.kind == "osc":
        from lalelu.output.osc import OscOutput

        return OscOutput(cfg.osc_host, cfg.osc_port, cfg.osc_prefix)
    if cfg.kind == "synth":
        from lalelu.output.synth import SynthOutput

        return SynthOutput.from_config(cfg)
    from lalelu.output.log import LogOutput

    return LogOutput()
