"""OSC over UDP, e.g. to Pure Data. A hit due later leaves at once as a bundle time-tagged with the wall-clock
moment it is due (OSC 1.0 time tags: NTP time), so a receiver that honours time tags plays it then."""

from __future__ import annotations

import time

from lalelu.clock import now_ns


class OscOutput:
    """OSC over UDP, e.g. to Pure Data: `<prefix>/hit name note velocity`, `<prefix>/control name value`."""

    def __init__(self, host: str, port: int, prefix: str = "/lalelu") -> None:
        from pythonosc.udp_client import SimpleUDPClient

        self._client = SimpleUDPClient(host, port)
        self.hit_address, self.control_address = f"{prefix}/hit", f"{prefix}/control"
        self.off_address = f"{prefix}/off"

    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        ahead_ns = at_ns - now_ns() if at_ns else 0
        if ahead_ns <= 0:
            self._client.send_message(self.hit_address, [name, note, velocity])
            return
        from pythonosc.osc_bundle_builder import OscBundleBuilder
        from pythonosc.osc_message_builder import OscMessageBuilder

        bundle = OscBundleBuilder(time.time() + ahead_ns / 1e9)  # type: ignore[arg-type]
        message = OscMessageBuilder(self.hit_address)
        message.add_arg(name)
        message.add_arg(note)
        message.add_arg(velocity)
        bundle.add_content(message.build())
        self._client.send(bundle.build())

    def note_off(self, channel: int, note: int) -> None:
        self._client.send_message(self.off_address, [note])

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        self._client.send_message(self.control_address, [name, value])

    def all_notes_off(self) -> None:
        self._client.send_message(self.off_address, [-1])

    def close(self) -> None:
        self.all_notes_off()
