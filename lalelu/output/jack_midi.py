"""MIDI out as a JACK client of its own (JACK-Client): each note is placed on the JACK frame at which it is
due, so a hit scheduled for its impact plus [output] latency_ms leaves on that frame, however the loop's
poses fall between JACK periods.

The loop hands (due frame, message) pairs to the process callback through a deque (appends and pops are
atomic); the callback writes the ones due in its period at their offset, in order, and keeps the rest. A
message due in the past goes out at the period's first frame. JACK sends what a period holds one period
later, the same for every message: a constant, not jitter.
"""

from __future__ import annotations

import collections
import time

from lalelu.clock import now_ns
from lalelu.closing import Closing
from lalelu.output import OutputError

MAX_PENDING = 512  # messages waiting for their frame; more means the loop schedules faster than it plays


class JackMidiOutput(Closing):
    def __init__(self, port: str = "", virtual: bool = False, client_name: str = "lalelu") -> None:
        try:
            import jack
        except (ImportError, OSError) as exc:
            raise OutputError(
                f"JACK MIDI needs JACK-Client and libjack ({exc}): pip install 'lalelu-drums[edge]' and "
                "apt install libjack-jackd2-0"
            ) from exc
        try:
            self._client = jack.Client(client_name, no_start_server=True)
        except jack.JackOpenError as exc:
            raise OutputError(
                f"cannot open the jack MIDI system ({exc}): start the JACK server (jackd)"
            ) from exc
        self._jack = jack
        self.rate = self._client.samplerate
        self._port = self._client.midi_outports.register("out")
        self._incoming: collections.deque[tuple[int, bytes]] = collections.deque()
        self._pending: list[tuple[int, bytes]] = []  # touched by the process callback only
        # The last frame queued for each note (on or off) and the notes sounding: a note's messages leave
        # in the order they were given, so a note-off never leaves before its note-on (a hit is scheduled
        # ahead, an all-notes-off at a lost backend is not).
        self._last_frame: dict[tuple[int, int], int] = {}
        self._sounding: set[tuple[int, int]] = set()
        self.late = 0  # messages written after their frame had passed (at the period's start)
        self._client.set_process_callback(self._process)
        self._client.activate()
        self.port_name = self._port.name
        if not virtual:
            targets = [
                p.name
                for p in self._client.get_ports(is_midi=True, is_input=True)
                if port.lower() in p.name.lower() and not p.name.startswith(f"{self._client.name}:")
            ]
            if not targets:
                available = [p.name for p in self._client.get_ports(is_midi=True, is_input=True)]
                self.close()
                raise OutputError(
                    f"no MIDI output port contains {port!r}; available: {available or 'none'}. "
                    "Plug in the interface, fix [output] port, or use a virtual port"
                )
            self._client.connect(self._port, targets[0])
            self.port_name = targets[0]

    def _process(self, frames: int) -> None:
        self._port.clear_buffer()
        while self._incoming:
            self._pending.append(self._incoming.popleft())
        if not self._pending:
            return
        start = self._client.last_frame_time
        self._pending.sort(key=lambda e: e[0])
        kept = 0
        for frame, message in self._pending:
            offset = frame - start
            if offset >= frames:
                self._pending[kept] = (frame, message)
                kept += 1
                continue
            if offset < 0:
                self.late += 1
            self._port.write_midi_event(max(0, offset), message)
        del self._pending[kept:]

    def frame_at(self, at_ns: int) -> int:
        """The JACK frame at monotonic time `at_ns` (now where 0 or past)."""
        ahead = max(0, at_ns - now_ns()) if at_ns else 0
        return self._client.frame_time + ahead * self.rate // 1_000_000_000

    def send(self, message: bytes | list[int], at_ns: int = 0, not_before: int = 0) -> int:
        """Queues `message` for the frame at `at_ns`, or at frame `not_before` if that is later; returns
        the frame."""
        frame = max(self.frame_at(at_ns), not_before)
        if len(self._incoming) < MAX_PENDING:
            self._incoming.append((frame, bytes(message)))
        return frame

    def _send_note(self, key: tuple[int, int], message: list[int], at_ns: int) -> None:
        self._last_frame[key] = self.send(message, at_ns, self._last_frame.get(key, 0))

    def note_on(self, channel: int, note: int, velocity: int, name: str, at_ns: int = 0) -> None:
        self._send_note((channel, note), [0x90 | (channel - 1), note, velocity], at_ns)
        self._sounding.add((channel, note))

    def note_off(self, channel: int, note: int, at_ns: int = 0) -> None:
        self._send_note((channel, note), [0x80 | (channel - 1), note, 0], at_ns)
        self._sounding.discard((channel, note))

    def control(self, channel: int, kind: str, number: int, value: int, name: str) -> None:
        if kind == "pitchbend":
            self.send([0xE0 | (channel - 1), value & 0x7F, value >> 7])
        else:
            self.send([0xB0 | (channel - 1), number, value])

    def all_notes_off(self) -> None:
        last = max(self._last_frame.values(), default=0)  # after every note message still to leave
        for channel, note in list(self._sounding):
            self.note_off(channel, note)
        for ch in range(16):
            self.send([0xB0 | ch, 123, 0], not_before=last)  # All Notes Off, whatever a receiver still holds

    def close(self) -> None:
        if self._client is None:
            return
        self.all_notes_off()
        # The callback writes what is queued in its next period; give it two before the port goes.
        deadline = time.monotonic() + 0.5
        while (self._incoming or self._pending) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.01)
        self._client.deactivate()
        self._client.close()
        self._client = None
