"""Pose consumers: what an app does with each pose. The one interface, and the one factory that decides
where the sound leaves (`pose_consumer`): the consumer that plays (gesture reader + output + note-off
scheduling + mapping reload) runs on the edge or on the backend, the same code in both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from lalelu.clock import now_ns
from lalelu.config import Config, OutputConfig
from lalelu.errors import ConfigError
from lalelu.gestures.mapping import Control, Mapping, load_mapping
from lalelu.gestures.reader import GestureReader, Hit
from lalelu.keypoints import KEYPOINT_NAMES
from lalelu.output import SoundOutput, open_output

log = logging.getLogger("lalelu.gestures")
MAX_SOUNDING = 128
HitListener = Callable[[int, int, str], None]  # (note, velocity, name) of each hit, after it sounded


class PoseConsumer(Protocol):
    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        """Called once per frame, in frame order, with (17, 3) rows (x, y, score) in frame pixels."""

    def all_notes_off(self) -> None:
        """End every sounding note now (the pose stream has a hole: a note-off may never come)."""

    def close(self) -> None: ...


class LogConsumer:
    """Where no sound leaves: logs the nose every `every` poses (debug level: nothing is formatted
    unless asked for)."""

    def __init__(self, every: int = 100) -> None:
        self.every = every
        self.poses = 0

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        self.poses += 1
        if self.poses % self.every == 0 and log.isEnabledFor(logging.DEBUG):
            x, y, s = keypoints[0]
            log.debug("frame %d: %s at (%.1f, %.1f) score %.2f", seq, KEYPOINT_NAMES[0], x, y, s)

    def all_notes_off(self) -> None:
        pass

    def close(self) -> None:
        pass


def sound_leaves_here(cfg: Config, role: str) -> bool:
    """Whether the app of `role` ("edge" or "backend") plays the sound: [output] where, unless kind none."""
    return cfg.output.where == role and cfg.output.kind != "none"


def pose_consumer(
    cfg: Config, role: str, width: int, height: int, on_hit: HitListener | None = None
) -> PoseConsumer:
    """The consumer of `role`'s poses: the one that plays where the sound leaves, else one that logs.
    `on_hit(note, velocity, name)` hears every hit too (the monitor)."""
    if sound_leaves_here(cfg, role):
        return gesture_consumer(cfg.output, width, height, on_hit)
    return LogConsumer()


class GestureConsumer:
    def __init__(
        self,
        mapping: Mapping,
        output: SoundOutput,
        width: int,
        height: int,
        mapping_path: Path | None = None,
        on_hit: HitListener | None = None,
        latency_ms: float = 10.0,
    ) -> None:
        self.output = output
        self.latency_ns = int(latency_ms * 1e6)
        self.on_hit = on_hit
        self.width, self.height = width, height
        self.mapping_path = mapping_path
        self._mtime = os.stat(mapping_path).st_mtime_ns if mapping_path else 0
        self._last_check = 0
        self.reload_requested = False
        self.test_note_requested = False  # SIGUSR1 (`fab play-test`): one note through the output
        # Pending note-offs: (due_ns, note), fixed size, scanned once per pose.
        self._off_due = np.zeros(MAX_SOUNDING, np.int64)
        self._off_note = np.zeros(MAX_SOUNDING, np.int64)
        self._set(mapping)
        self.hits = 0

    def _set(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.reader = GestureReader(
            mapping, self.width, self.height, self._hit, self._control, latency_ns=self.latency_ns
        )
        self._length_ns = int(mapping.note_length_ms * 1e6)

    def _hit(self, hit: Hit) -> None:
        ch = self.mapping.channel
        # A note struck again while it sounds is ended first (a drum module's retrigger): two note-ons of
        # one note without a note-off between leave the receiver to guess which note-off ends which.
        again = np.flatnonzero((self._off_due != 0) & (self._off_note == hit.note))
        for i in again:
            self.output.note_off(ch, hit.note)
            self._off_due[i] = 0
        free = np.flatnonzero(self._off_due == 0)
        if free.size:
            slot = int(free[0])
        else:  # every slot sounding: end the oldest note now rather than let one hang
            slot = int(np.argmin(self._off_due))
            self.output.note_off(ch, int(self._off_note[slot]))
        due = hit.impact_ns + self.latency_ns if hit.impact_ns else 0
        self.output.note_on(ch, hit.note, hit.velocity, hit.name, due)
        if self.on_hit is not None:
            self.on_hit(hit.note, hit.velocity, hit.name)
        self._off_due[slot] = max(due, now_ns()) + self._length_ns
        self._off_note[slot] = hit.note
        self.hits += 1

    def _test_note(self, capture_ns: int) -> None:
        """The mapping's first note at velocity 100, sounded at once, as a hit is (note-off included)."""
        self.test_note_requested = False
        note = self.mapping.strikes[0].note if self.mapping.strikes else 38
        self._hit(Hit(capture_ns, "test note", note, 100))
        log.info(
            "test note played: note %d velocity 100 on channel %d through %s",
            note,
            self.mapping.channel,
            type(self.output).__name__,
        )

    def _control(self, control: Control, value: int, t_ns: int) -> None:
        self.output.control(self.mapping.channel, control.kind, control.cc, value, control.name)

    def _notes_off_due(self, t: int) -> None:
        due = np.flatnonzero((self._off_due != 0) & (self._off_due <= t))
        for i in due:
            self.output.note_off(self.mapping.channel, int(self._off_note[i]))
            self._off_due[i] = 0

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        t = now_ns()
        if self.test_note_requested:
            self._test_note(capture_ns)
        self.reader.update(capture_ns, keypoints, t)
        if self._off_due.any():
            self._notes_off_due(t)
        if self.reload_requested or (self.mapping_path and t - self._last_check > 1_000_000_000):
            self._last_check = t
            self._maybe_reload()

    def _maybe_reload(self) -> None:
        assert self.mapping_path is not None
        requested, self.reload_requested = self.reload_requested, False
        try:
            mtime = os.stat(self.mapping_path).st_mtime_ns
        except OSError:
            return
        if not requested and mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            mapping = load_mapping(self.mapping_path)
        except ConfigError as exc:
            log.error("mapping not reloaded, keeping the old one: %s", exc)
            return
        # The new mapping may use another channel or notes: what the old one sounds ends now, on its own.
        self._notes_off_due(np.iinfo(np.int64).max)
        self._set(mapping)
        log.info(
            "mapping %s reloaded: %d strikes, %d controls",
            self.mapping_path,
            len(mapping.strikes),
            len(mapping.controls),
        )

    def all_notes_off(self) -> None:
        self._notes_off_due(np.iinfo(np.int64).max)
        self.output.all_notes_off()

    def close(self) -> None:
        self._notes_off_due(np.iinfo(np.int64).max)
        self.output.close()


BUNDLED_MAPPINGS = Path(__file__).resolve().parent.parent / "data" / "mappings"
DEFAULT_MAPPING = BUNDLED_MAPPINGS / "two-hands.toml"


def resolve_mapping(name: str) -> Path:
    """A path, or the name of a bundled mapping ("two-hands", "latency-rig", "demo-nod")."""
    if not name:
        return DEFAULT_MAPPING
    bundled = BUNDLED_MAPPINGS / f"{name}.toml"
    return bundled if bundled.exists() and not Path(name).exists() else Path(name)


def gesture_consumer(
    cfg: OutputConfig, width: int, height: int, on_hit: HitListener | None = None
) -> GestureConsumer:
    path = resolve_mapping(cfg.mapping)
    return GestureConsumer(load_mapping(path), open_output(cfg), width, height, path, on_hit, cfg.latency_ms)


def request_test_note(consumer: object) -> None:
    """SIGUSR1 (`fab play-test`): one note through the output at the next pose, and a log line saying so."""
    if isinstance(consumer, GestureConsumer):
        consumer.test_note_requested = True
    else:
        log.warning("SIGUSR1: no test note (the sound leaves from the backend, not here)")


def request_reload(consumer: object) -> None:
    """SIGHUP (`systemctl reload`): the mapping is read again at the next frame; nothing else stops."""
    if isinstance(consumer, GestureConsumer):
        consumer.reload_requested = True
    else:
        log.info("SIGHUP: nothing to reload (no mapping plays here)")
