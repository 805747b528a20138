"""What an edge run tells while it plays and when it ends. Every summary interval: a log line, systemd's
STATUS=, the state file `lalelu check` and `fab` read, and the telemetry rows answered since the last
report; the loop only copies what they need (microseconds) and the reporter thread does the rest. At the
end: the run's summary."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import IO

import numpy as np

from lalelu.config import Config
from lalelu.edge.modes import EdgeMode
from lalelu.edge.telemetry import EdgeCounters, FrameTelemetry
from lalelu.runtime.reporter import Reporter
from lalelu.runtime.sdnotify import notify
from lalelu.runtime.state import state_path, status_line, write_state
from lalelu.timing import stage_summary, write_jsonl

log = logging.getLogger("lalelu.edge")


class EdgeReports:
    def __init__(
        self,
        cfg: Config,
        telemetry: FrameTelemetry,
        counters: EdgeCounters,
        camera_fps: float,
        camera_dropped: Callable[[], int],
        hits: Callable[[], int],
    ) -> None:
        self.cfg, self.telemetry, self.counters = cfg, telemetry, counters
        self._camera_fps, self._dropped, self._hits = camera_fps, camera_dropped, hits
        self._state_path = state_path(cfg.edge.state_file)
        self._telemetry_fh: IO[str] | None = None
        self._reporter: Reporter | None = None
        self._written = 0  # telemetry rows written up to this frame
        self.answered_end = 0  # one past the last frame that got its pose (set by the loop's delivery)
        self._last = (time.monotonic(), 0)  # (when, frames captured): each report's rate

    def __enter__(self) -> EdgeReports:
        if self.cfg.edge.telemetry:
            self._telemetry_fh = open(self.cfg.edge.telemetry, "w")
        self._reporter = Reporter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(self.answered_end)

    def close(self, end_seq: int) -> None:
        """The reporter's queued reports first, then the rows not written yet, up to frame end_seq."""
        if self._reporter is not None:
            self._reporter.close()
            self._reporter = None
        if self._telemetry_fh is not None:
            write_jsonl(self.telemetry.answered_between(self._written, end_seq), self._telemetry_fh)
            self._telemetry_fh.close()
            self._telemetry_fh = None

    def periodic(self, first_seq: int, mode: EdgeMode) -> None:
        """On the loop: copy what the report needs; the reporter thread does the rest."""
        # Replies come in frame order: every frame before the last answered one is answered or lost.
        # Later ones may be in flight and are written with the next report.
        done = self.answered_end
        recent = self.telemetry.answered_between(max(first_seq, done - 500), done)
        new = self.telemetry.answered_between(self._written, done) if self._telemetry_fh is not None else None
        self._written = done
        c = self.counters
        now, captured = time.monotonic(), c.captured + self._dropped()
        then, captured_then = self._last
        self._last = (now, captured)
        counts = {
            "mode": mode.text,
            "fps": (captured - captured_then) / max(now - then, 1e-9),
            "frames": c.captured,
            "poses": c.received,
            "dropped": self._dropped(),
            "hits": self._hits(),
            "backend_losses": c.backend_losses,
            "backend_lies": c.lies,
        }
        assert self._reporter is not None, "enter first"
        self._reporter.submit(self._write, recent, new, counts)

    def _write(self, recent: np.ndarray, new: np.ndarray | None, counts: dict) -> None:
        """On the reporter thread: the log line, systemd's STATUS=, the state file, the telemetry rows."""
        s = stage_summary(recent)
        log.info(
            "frames %d, poses %d, dropped %d | total p50 %.2f p99 %.2f ms | infer p50 %.2f ms | "
            "overhead p50 %.2f p99 %.2f ms",
            counts["frames"],
            counts["poses"],
            counts["dropped"],
            s["total"].get("p50", 0),
            s["total"].get("p99", 0),
            s["inference"].get("p50", 0),
            s["overhead"].get("p50", 0),
            s["overhead"].get("p99", 0),
        )
        if new is not None and self._telemetry_fh is not None:
            write_jsonl(new, self._telemetry_fh)  # first: whoever sees the new state finds its frames
        self._publish_state(s, counts)

    def _publish_state(self, s: dict, counts: dict) -> None:
        state = {
            **counts,
            "backend": self.cfg.edge.backend,
            "fps_wanted": self._camera_fps,
            "latency_p50_ms": s["total"].get("p50", 0.0),
            "latency_p99_ms": s["total"].get("p99", 0.0),
            "summary_interval_s": self.cfg.edge.summary_interval_s,
            "pid": os.getpid(),
        }
        notify("STATUS=" + status_line(state))
        if self._state_path is not None:
            try:
                write_state(self._state_path, state)
            except OSError as exc:
                log.warning(
                    "cannot write the state file %s (%s); `lalelu check` will not see it",
                    self._state_path,
                    exc,
                )
                self._state_path = None

    def summary(self, first_seq: int, end_seq: int, elapsed_s: float) -> dict:
        s = stage_summary(self.telemetry.answered_between(first_seq, end_seq))
        c = self.counters
        captured = c.captured + self._dropped()
        pick = ("p50", "p99")
        return {
            # frames given to a pose engine, the backend's or the local one (not skipped, not dropped)
            "frames_inferred": c.captured - c.skipped,
            "frames_remote": c.captured - c.skipped - c.frames_local,
            "poses_received": c.poses,
            "frames_lost": captured - c.skipped - c.poses,
            "frames_skipped": c.skipped,
            "frames_dropped_at_capture": self._dropped(),
            "fps": round(c.captured / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": {k: round(s["total"].get(k, 0.0), 3) for k in pick},
            "inference_ms": {k: round(s["inference"].get(k, 0.0), 3) for k in pick},
            "overhead_ms": {k: round(s["overhead"].get(k, 0.0), 3) for k in pick},
            "hits": self._hits(),
            "backend_losses": c.backend_losses,
            "backend_lies": c.lies,
            "reconnects": c.reconnects,
            "frames_local": c.frames_local,
            "frames_lost_with_backend": c.lost_in_flight,
            "stages_ms": s,
        }
