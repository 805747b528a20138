"""An output that only logs: the demo's default, and where no sound device is wanted."""

from __future__ import annotations

import logging

from lalelu.closing import Closing

log = logging.getLogger("lalelu.sound")


class LogOutput(Closing):
    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        log.info("hit %s: note %d velocity %d", name, note, velocity)

    def note_off(self, channel: int, note: int) -> None:
        pass

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        log.debug("control %s: %s %d = %d", name, kind, number, value)

    def all_notes_off(self) -> None:
        pass

    def close(self) -> None:
        pass
