"""OSC over UDP, e.g. to Pure Data. A hit due later leaves at once as a bundle time-tagged with the wall-clock
moment it is due (OSC 1.0 time tags: NTP time), so a receiver that honours time tags plays it then."""

from __future__ import annotations

import time

from lalelu.clock import now_ns
from lalelu.closing import Closing


class OscOutput(Closing):
    """OSC over UDP, e.g. to Pure Data: `<prefix>/hit name note velocity`, `<prefix>/control name value`."""

    def __init__(self, host: str, port: int, prefix: str = "/lalelu") -> None:
        from pythonosc.udp_client import SimpleUDPClient

        self._client = SimpleUDPClient(host, port)
        self.hit_address, self.control_address = f"{prefix}/hit", f"{prefix}/control"
        self.off_address = f"{prefix}/off"
        # The time tag of each note's latest hit still due (wall-clock s): its note-off is tagged no
        # earlier, so an off sent at once (a lost backend's all-notes-off) cannot overtake its hit.
        self._due: dict[int, float] = {}

    def _send(self, address: str, args: list[str | int], at_ns: int = 0, tag: float = 0.0) -> float:
        """Sends at once, or as a bundle tagged for `at_ns` (monotonic) or `tag`, whichever is later;
        returns the tag (0: sent plain)."""
        ahead_ns = at_ns - now_ns() if at_ns else 0
        if ahead_ns > 0:
            tag = max(tag, time.time() + ahead_ns / 1e9)
        if tag <= time.time():
            self._client.send_message(address, args)
            return 0.0
        from pythonosc.osc_bundle_builder import OscBundleBuilder
        from pythonosc.osc_message_builder import OscMessageBuilder

        bundle = OscBundleBuilder(tag)  # type: ignore[arg-type]
        message = OscMessageBuilder(address)
        for arg in args:
            message.add_arg(arg)
        bundle.add_content(message.build())
        self._client.send(bundle.build())
        return tag

    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        self._due[note] = self._send(self.hit_address, [name, note, velocity], at_ns)

    def note_off(self, channel: int, note: int) -> None:
        self._send(self.off_address, [note], tag=self._due.pop(note, 0.0))

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        self._client.send_message(self.control_address, [name, value])

    def all_notes_off(self) -> None:
        last = max(self._due.values(), default=0.0)
        self._due.clear()
        self._send(self.off_address, [-1], tag=last)

    def close(self) -> None:
        self.all_notes_off()
