"""Where hits and controls leave: MIDI (python-rtmidi, ALSA or JACK), OSC over UDP, or a log."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from lalelu.errors import LaleluError

log = logging.getLogger("lalelu.sound")


class OutputError(LaleluError):
    pass


class SoundOutput(Protocol):
    def note_on(self, channel: int, note: int, velocity: int, name: str) -> None: ...

    def note_off(self, channel: int, note: int) -> None: ...

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None: ...

    def all_notes_off(self) -> None: ...

    def close(self) -> None: ...


class MidiOutput:
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

    def note_on(self, channel: int, note: int, velocity: int, name: str) -> None:
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


class OscOutput:
    """OSC over UDP, e.g. to Pure Data: `<prefix>/hit name note velocity`, `<prefix>/control name value`."""

    def __init__(self, host: str, port: int, prefix: str = "/lalelu") -> None:
        from pythonosc.udp_client import SimpleUDPClient

        self._client = SimpleUDPClient(host, port)
        self.hit_address, self.control_address = f"{prefix}/hit", f"{prefix}/control"
        self.off_address = f"{prefix}/off"

    def note_on(self, channel: int, note: int, velocity: int, name: str) -> None:
        self._client.send_message(self.hit_address, [name, note, velocity])

    def note_off(self, channel: int, note: int) -> None:
        self._client.send_message(self.off_address, [note])

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        self._client.send_message(self.control_address, [name, value])

    def all_notes_off(self) -> None:
        self._client.send_message(self.off_address, [-1])

    def close(self) -> None:
        self.all_notes_off()


class LogOutput:
    def note_on(self, channel: int, note: int, velocity: int, name: str) -> None:
        log.info("hit %s: note %d velocity %d", name, note, velocity)

    def note_off(self, channel: int, note: int) -> None:
        pass

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        log.debug("control %s: %s %d = %d", name, kind, number, value)

    def all_notes_off(self) -> None:
        pass

    def close(self) -> None:
        pass
