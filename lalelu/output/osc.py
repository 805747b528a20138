"""OSC over UDP, e.g. to Pure Data."""

from __future__ import annotations


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
