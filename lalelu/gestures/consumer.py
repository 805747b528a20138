"""Pose consumers: what an app does with each pose. The one interface, and the one factory that decides
where the sound leaves (`pose_consumer`): the consumer that plays (the gesture reader, the output with its
sounding notes, the mapping file) runs on the edge or on the backend, the same code in both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from lalelu.clock import now_ns
from lalelu.config import Config, OutputConfig
from lalelu.gestures.mapping import Control, Mapping, MappingFile, load_mapping
from lalelu.gestures.reader import GestureReader, Hit
from lalelu.keypoints import KEYPOINT_NAMES
from lalelu.output import SoundOutput, open_output
from lalelu.output.sounding import SoundingNotes

log = logging.getLogger("lalelu.gestures")
HitListener = Callable[[int, int, str], None]  # (note, velocity, name) of each hit, after it sounded


class PoseConsumer(Protocol):
    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        """Called once per frame, in frame order, with (17, 3) rows (x, y, score) in frame pixels."""

    def all_notes_off(self) -> None:
        """End every sounding note now (the pose stream has a hole: a note-off may never come)."""

    def request_reload(self) -> None:
        """SIGHUP (`systemctl reload`): read the mapping again at the next pose; nothing else stops."""

    def request_test_note(self) -> None:
        """SIGUSR1 (`fab play-test`): one note through the output at the next pose, and a log line."""

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

    def request_reload(self) -> None:
        log.info("SIGHUP: nothing to reload (no mapping plays here)")

    def request_test_note(self) -> None:
        log.warning("SIGUSR1: no test note (the sound leaves from the backend, not here)")

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
    """The consumer that plays: each pose through the gesture reader, each hit and control to the output,
    every note ended in time (SoundingNotes), the mapping read again when its file changes (MappingFile)."""

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
        self.notes = SoundingNotes(output)
        self.latency_ns = int(latency_ms * 1e6)
        self.on_hit = on_hit
        self.width, self.height = width, height
        self.mapping_file = MappingFile(mapping_path) if mapping_path else None
        self._reload_asked = False
        self._test_note_asked = False
        self._set(mapping)
        self.hits = 0

    def request_reload(self) -> None:
        self._reload_asked = True

    def request_test_note(self) -> None:
        self._test_note_asked = True

    def _set(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.reader = GestureReader(
            mapping, self.width, self.height, self._hit, self._control, latency_ns=self.latency_ns
        )
        self._length_ns = int(mapping.note_length_ms * 1e6)

    def _hit(self, hit: Hit) -> None:
        due = hit.impact_ns + self.latency_ns if hit.impact_ns else 0
        self.notes.strike(self.mapping.channel, hit.note, hit.velocity, hit.name, due, self._length_ns)
        if self.on_hit is not None:
            self.on_hit(hit.note, hit.velocity, hit.name)
        self.hits += 1

    def _test_note(self, capture_ns: int) -> None:
        """The mapping's first note at velocity 100, sounded at once, as a hit is (note-off included)."""
        self._test_note_asked = False
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

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        t = now_ns()
        if self._test_note_asked:
            self._test_note(capture_ns)
        self.reader.update(capture_ns, keypoints, t)
        self.notes.end_due(self.mapping.channel, t)
        if self.mapping_file is not None:
            asked, self._reload_asked = self._reload_asked, False
            mapping = self.mapping_file.changed(t, asked)
            if mapping is not None:
                # The new mapping may use another channel or notes: what the old one sounds ends now.
                self.notes.end_due(self.mapping.channel)
                self._set(mapping)
                log.info(
                    "mapping %s reloaded: %d strikes, %d controls",
                    self.mapping_file.path,
                    len(mapping.strikes),
                    len(mapping.controls),
                )

    def all_notes_off(self) -> None:
        self.notes.end_due(self.mapping.channel)
        self.output.all_notes_off()

    def close(self) -> None:
        self.notes.end_due(self.mapping.channel)
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
