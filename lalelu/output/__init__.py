"""Where hits and controls leave: the one interface every output implements, and the factory that opens
the one `[output] kind` names. MIDI (python-rtmidi, ALSA or JACK), OSC over UDP, the built-in synth
(FluidSynth), or a log.
"""

from __future__ import annotations

from typing import Protocol

from lalelu.config import OutputConfig
from lalelu.errors import LaleluError


class OutputError(LaleluError):
    pass


class SoundOutput(Protocol):
    def note_on(self, channel: int, note: int, velocity: int, name: str) -> None: ...

    def note_off(self, channel: int, note: int) -> None: ...

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None: ...

    def all_notes_off(self) -> None: ...

    def close(self) -> None: ...


def open_output(cfg: OutputConfig) -> SoundOutput:
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
