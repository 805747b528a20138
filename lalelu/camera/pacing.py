"""Frame pacing shared by the sources that have no sensor clock of their own."""

from __future__ import annotations

from lalelu.clock import now_ns, sleep_until_ns


class Pacer:
    """Hands out frame times on a fixed grid; a loop that falls behind skips frames like a camera would."""

    def __init__(self, fps: float, paced: bool = True) -> None:
        self.period_ns = round(1e9 / fps)
        self.paced = paced
        self.start_ns = 0  # set by the first frame: the clock runs with the loop, not from construction
        self.index = -1
        self.dropped = 0

    def next(self) -> int:
        """Block until the next frame time; return it (ns)."""
        self.index += 1
        if not self.paced:
            return now_ns()
        if self.index == 0:
            # Frames "due" while the engine loaded or the backend connected were never wanted: the
            # first frame is taken when the loop first asks, and the grid starts there.
            self.start_ns = now_ns()
            return self.start_ns
        due = self.start_ns + self.index * self.period_ns
        late = now_ns() - due
        if late > self.period_ns:
            skipped = late // self.period_ns
            self.dropped += skipped
            self.index += skipped
            due = self.start_ns + self.index * self.period_ns
        sleep_until_ns(due)
        return due
