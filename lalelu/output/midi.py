"""MIDI out through python-rtmidi, to an ALSA sequencer port or a JACK MIDI port."""

from __future__ import annotations

import time

from lalelu.closing import Closing
from lalelu.output import OutputError


class MidiOutput(Closing):
    """python-rtmidi output: a port whose name contains `port`, or a virtual port named `port`."""

    def __init__(
        self, port: str = "", api: str = "alsa", virtual: bool = False, client_name: str = "lalelu"
    ) -> None:
        try:
            import rtmidi
        except ImportError as exc:
            raise OutputError("MIDI output needs python-rtmidi: pip install 'lalelu-drums[edge]'") from exc
        apis = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK}
        if api not in apis:
            raise OutputError(f"unknown MIDI API {api!r}: use alsa or jack")
        try:
            self._out = rtmidi.MidiOut(rtapi=apis[api], name=client_name)
        except rtmidi.SystemError as exc:
            hint = "start the JACK server (jackd)" if api == "jack" else "load snd-seq (modprobe snd-seq)"
            raise OutputError(f"cannot open the {api} MIDI system ({exc}): {hint}") from exc
        if virtual:
            self._out.open_virtual_port(port or "lalelu drums")
            self.port_name = port or "lalelu drums"
        else:
            names = self._out.get_ports()
            match = [i for i, n in enumerate(names) if port.lower() in n.lower()]
            if not match:
                raise OutputError(
                    f"no MIDI output port contains {port!r}; available: {names or 'none'}. "
                    "Plug in the interface, fix [output] port, or use a virtual port"
                )
            self._out.open_port(match[0])
            self.port_name = names[match[0]]
        self._sounding: set[tuple[int, int]] = set()
        self._api = api

    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        # rtmidi has no timed send: the note leaves now, when the reader fired (docs/timing.md: where each output puts the note)
        self._out.send_message([0x90 | (channel - 1), note, velocity])
        self._sounding.add((channel, note))

    def note_off(self, channel: int, note: int) -> None:
        self._out.send_message([0x80 | (channel - 1), note, 0])
        self._sounding.discard((channel, note))

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        if kind == "pitchbend":
            self._out.send_message([0xE0 | (channel - 1), value & 0x7F, value >> 7])
        else:
            self._out.send_message([0xB0 | (channel - 1), number, value])

    def all_notes_off(self) -> None:
        for channel, note in list(self._sounding):
            self.note_off(channel, note)
        for ch in range(16):
            self._out.send_message([0xB0 | ch, 123, 0])  # All Notes Off, for whatever a receiver still holds

    def close(self) -> None:
        self.all_notes_off()
        if self._api == "jack":
            # JACK sends from its process callback, a period or more later; closing the port
            # before that would throw away the last note-offs.
            time.sleep(0.05)
        self._out.close_port()
        del self._out
