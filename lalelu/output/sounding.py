"""The notes an output is sounding and when each is to end: a fixed table of MAX_SOUNDING, scanned once a
pose, nothing allocated. Every note-on gets its note-off here, so that none hangs: at its length, when the
same note is struck again while it sounds (a drum module's retrigger: two note-ons of one note without a
note-off between leave the receiver to guess which note-off ends which), when the table is full (the
oldest ends), and all of them when the pose stream has a hole or the mapping changes."""

from __future__ import annotations

import numpy as np

from lalelu.clock import now_ns
from lalelu.output import SoundOutput

MAX_SOUNDING = 128
NEVER = np.iinfo(np.int64).max


class SoundingNotes:
    def __init__(self, output: SoundOutput) -> None:
        self.output = output
        self._off_due = np.zeros(MAX_SOUNDING, np.int64)  # 0: a free slot
        self._off_note = np.zeros(MAX_SOUNDING, np.int64)

    def strike(self, channel: int, note: int, velocity: int, name: str, due_ns: int, length_ns: int) -> None:
        """Note-on at `due_ns` (0: now), its note-off `length_ns` after."""
        for i in np.flatnonzero((self._off_due != 0) & (self._off_note == note)):
            self.output.note_off(channel, note)
            self._off_due[i] = 0
        free = np.flatnonzero(self._off_due == 0)
        if free.size:
            slot = int(free[0])
        else:  # every slot sounding: end the oldest note now rather than let one hang
            slot = int(np.argmin(self._off_due))
            self.output.note_off(channel, int(self._off_note[slot]))
        self.output.note_on(channel, note, velocity, name, due_ns)
        self._off_due[slot] = max(due_ns, now_ns()) + length_ns
        self._off_note[slot] = note

    def end_due(self, channel: int, t_ns: int = NEVER) -> None:
        """Note-off for every note due to end by `t_ns` (by default: all of them)."""
        if not self._off_due.any():
            return
        for i in np.flatnonzero((self._off_due != 0) & (self._off_due <= t_ns)):
            self.output.note_off(channel, int(self._off_note[i]))
            self._off_due[i] = 0
