"""Where an edge's poses come from, named once: the monitor's shared memory stores the number, the page
and the log show `word`, the state file (and so `lalelu check` and `fab`) carries `text`."""

from __future__ import annotations

import enum


class EdgeMode(enum.IntEnum):
    REMOTE = 0  # the backend infers
    LOCAL = 1  # no backend configured: the local engine infers
    RECONNECTING = 2  # the backend was lost: the local engine infers while the edge asks it again
    STARTING = 3  # no frame yet (the monitor page's first state)

    @property
    def word(self) -> str:
        return self.name.lower()

    @property
    def text(self) -> str:
        """For people and the state file: a reconnecting edge plays locally, and says so first."""
        return "local, reconnecting" if self is EdgeMode.RECONNECTING else self.word

    @classmethod
    def of(cls, code: int) -> EdgeMode | None:
        """The mode a stored number means, None for a number no mode has (a feed of another version)."""
        return cls(code) if code in cls._value2member_map_ else None
