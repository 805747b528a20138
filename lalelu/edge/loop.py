"""`lalelu edge`: capture -> (backend | local engine) -> pose consumer, with per-frame telemetry."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from lalelu.camera import FrameSource, open_source
from lalelu.clock import now_ns
from lalelu.config import Config, load_link_key
from lalelu.edge.failover import Reconnector
from lalelu.edge.modes import EdgeMode
from lalelu.edge.monitor.feed import MonitorFeed
from lalelu.edge.monitor.process import MonitorTap, edge_monitor
from lalelu.edge.poses import BackendPoses, LocalPoses, PoseSource
from lalelu.engine import engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.gestures.consumer import PoseConsumer, pose_consumer, request_reload, request_test_note
from lalelu.gestures.recording import PoseRecorder
from lalelu.runtime.reporter import Reporter
from lalelu.runtime.sdnotify import notify
from lalelu.runtime.service import RealtimeService
from lalelu.runtime.state import state_path, status_line, write_state
from lalelu.timing import TelemetryRing, stage_summary, write_jsonl
from lalelu.wire.link import BackendDistrusted, BackendUnavailable, connect_backend

log = logging.getLogger("lalelu.edge")
LIE_HOLD_S = 30.0  # after a backend's first reply not believed, it is asked again this much later
LIE_HOLD_MAX_S = 600.0  # doubling with each lie, up to this


def distrust_hold_s(lies: int) -> float:
    """How long the edge waits before asking a backend again after its `lies`-th lie (1, 2, ...)."""
    return min(LIE_HOLD_S * 2 ** min(lies - 1, 20), LIE_HOLD_MAX_S)


class EdgeLoop:
    def __init__(
        self,
        cfg: Config,
        consumer: PoseConsumer | None = None,
        source: FrameSource | None = None,
        monitor: MonitorFeed | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source or open_source(cfg.camera)
        self.telemetry = TelemetryRing(1 << 16)
        self.consumer = consumer or pose_consumer(cfg, "edge", self.source.width, self.source.height)
        self.monitor = monitor
        if monitor is not None:
            self.consumer = MonitorTap(monitor, self.consumer, self.telemetry)
        self.captured = 0  # frames read from the camera (its own drops are source.dropped)
        self.received = 0
        self.bad_replies = 0
        self._stop = threading.Event()
        # where poses come from now: the backend, or the local engine (_local) while it is away
        self._poses: PoseSource | None = None
        self._local: LocalPoses | None = None
        self._reconnector: Reconnector | None = None
        self.lies = 0  # replies not believed, each ending a connection
        self._local_since = 0.0
        self.backend_losses = 0
        self.reconnects = 0
        self.frames_local = 0
        self.skipped = 0  # for the latency budget
        self.lost_in_flight = 0
        self._answered_end = 0  # one past the last frame that got its pose
        self._written = 0
        self._telemetry_fh: IO[str] | None = None
        self._state_path = state_path(cfg.edge.state_file)
        self._reporter: Reporter | None = None
        self._last_report = (time.monotonic(), 0)  # (when, frames captured): the fps of each report
        # Kicks systemd's watchdog while the loop waits for a slow backend's free slot: waiting up to
        # [edge] reply_timeout_s is the loop working as configured, not the loop hung.
        self._keepalive: Callable[[], None] | None = None

    def stop(self) -> None:
        self._stop.set()

    def _deliver(
        self, seq: int, keypoints: np.ndarray | None, queue_ns: int, infer_ns: int, served_ns: int
    ) -> None:
        """Every pose, remote or local, comes through here (remote ones on the link's receiver thread)."""
        row = self.telemetry.rows[seq % self.telemetry.capacity]  # not slot(): its count is the loop's
        row["pose_ns"] = now_ns()
        row["backend_queue_ns"], row["backend_infer_ns"], row["backend_total_ns"] = (
            queue_ns,
            infer_ns,
            served_ns,
        )
        self.received += 1
        self._answered_end = seq + 1
        if keypoints is None:
            self.bad_replies += 1
            return
        self.consumer.on_pose(seq, int(row["capture_ns"]), keypoints)

    def _open(self) -> None:
        cfg, src = self.cfg, self.source
        if not cfg.edge.backend or cfg.edge.fallback:
            estimator = PoseEstimator(engine_from_config(cfg.engine))
            self._local = LocalPoses(estimator, src.pixel_format, src.width, src.height, self._deliver)
            self._poses = self._local
        if cfg.edge.backend:
            key = load_link_key(cfg.edge.key_file, "edge")
            self._reconnector = Reconnector(
                cfg.edge.backend,
                src.pixel_format,
                src.width,
                src.height,
                cfg.edge.connect_timeout_s,
                max_delay_s=cfg.edge.reconnect_max_s,
                key=key,
                source=cfg.edge.source_address,
            )
            try:
                self._poses = self._backend_poses(
                    connect_backend(
                        cfg.edge.backend, cfg.edge.connect_timeout_s, key, cfg.edge.source_address
                    )
                )
                log.info("sending frames to the backend at %s", cfg.edge.backend)
            except BackendUnavailable as exc:
                if self._local is None:
                    raise
                log.warning("%s; inferring locally until it answers", exc)
                self._local_since = time.monotonic()
                self._reconnector.start()
        else:
            assert self._local is not None
            log.info("no backend configured: inferring locally with %s", self._local.estimator.engine.name)
        if cfg.edge.telemetry:
            self._telemetry_fh = open(cfg.edge.telemetry, "w")  # noqa: SIM115 - closed in run()

    def _backend_poses(self, sock: socket.socket) -> BackendPoses:
        src = self.source
        fmt, w, h = src.pixel_format, src.width, src.height
        return BackendPoses(sock, self.cfg.edge, fmt, w, h, self._deliver, keepalive=self._keepalive)

    def _to_local(self, why: str, lied: bool = False) -> None:
        """The backend is gone: end its link, silence the notes, play on with local poses, look for it
        (after a hold that doubles with each lie: a backend that answers the probe honestly and lies
        after is not taken back at once, again and again)."""
        assert self._poses is not None
        lost = self._poses.close()  # no late reply reaches the consumer after this
        self._poses = self._local
        self.lost_in_flight += lost
        self.consumer.all_notes_off()
        self.backend_losses += 1
        self._local_since = time.monotonic()
        if self._local is None:
            raise BackendUnavailable(f"{why}; [edge] fallback = false, so the edge stops here")
        hold_s = 0.0
        if lied:
            self.lies += 1
            hold_s = distrust_hold_s(self.lies)
        log.warning(
            "backend lost (%s): %d frames in flight lost; inferring locally with %s, reconnecting%s",
            why,
            lost,
            self._local.estimator.engine.name,
            f" in {hold_s:g} s (it lied {self.lies} times)" if hold_s else "",
        )
        assert self._reconnector is not None
        self._reconnector.start(hold_s)

    def _to_backend(self, sock: socket.socket) -> None:
        self._poses = self._backend_poses(sock)
        self.reconnects += 1
        log.warning(
            "backend %s answers again after %.2f s: sending frames to it (%d frames inferred locally so far)",
            self.cfg.edge.backend,
            time.monotonic() - self._local_since,
            self.frames_local,
        )

    def _step(self, frame: np.ndarray, capture_ns: int, seq: int) -> None:
        poses = self._poses
        assert poses is not None
        row = self.telemetry.slot(seq)
        row["seq"], row["capture_ns"], row["local"], row["pose_ns"] = seq, capture_ns, not poses.remote, 0
        row["sent_ns"] = now_ns()
        try:
            if not poses.submit(seq, capture_ns, frame):
                self.skipped += 1  # the backend is behind: this frame would arrive too late to matter
        except BackendUnavailable as exc:
            self._to_local(str(exc), lied=isinstance(exc, BackendDistrusted))
            self._step(frame, capture_ns, seq)  # this frame is not lost: it is the first local one
            return
        if not poses.remote:
            self.frames_local += 1
            sock = self._reconnector.take() if self._reconnector is not None else None
            if sock is not None:
                self._to_backend(sock)

    def run(self) -> dict:
        e = self.cfg.edge
        with RealtimeService(e.cpus, e.sched_fifo, e.fifo_priority) as service:
            self._keepalive = service.watchdog.kick
            self._open()
            service.go_realtime()
            return self._run(service)

    def _run(self, service: RealtimeService) -> dict:
        cfg = self.cfg
        affinity, fifo = service.affinity, service.fifo
        log.info(
            "edge: %s %dx%d %s at %.0f fps, CPUs %s, SCHED_FIFO %s",
            cfg.camera.source,
            self.source.width,
            self.source.height,
            self.source.pixel_format.name,
            self.source.fps,
            affinity,
            fifo,
        )
        self._reporter = Reporter()
        start = time.monotonic()
        end = start + cfg.edge.seconds if cfg.edge.seconds else float("inf")
        next_summary = start + cfg.edge.summary_interval_s if cfg.edge.summary_interval_s else float("inf")
        first_seq = None
        end_seq = 0  # one past the last frame's number; frames dropped at capture leave holes before it
        src, monitor = self.source, self.monitor
        service.ready()
        watchdog = service.watchdog
        try:
            while not self._stop.is_set():
                watchdog.kick()  # a camera that stops delivering stops the kicks: systemd restarts us
                got = src.read()
                if got is None:
                    log.info("the source has no more frames")
                    break
                frame, capture_ns, seq = got
                if monitor is not None:
                    monitor.offer_frame(frame, seq, self._mode_code())
                if first_seq is None:
                    first_seq = seq
                end_seq = seq + 1
                self._step(frame, capture_ns, seq)
                self.captured += 1
                now = time.monotonic()
                if now >= next_summary:
                    next_summary += cfg.edge.summary_interval_s
                    self._report(first_seq, seq + 1)
                if now >= end:
                    break
        finally:
            if self._reconnector is not None:
                self._reconnector.close()
            if self._poses is not None:
                self._poses.close(wait_s=2.0)
            try:
                src.close()
            finally:
                self.consumer.close()  # all notes off, whatever else failed
        summary = self.summary(first_seq or 0, end_seq, time.monotonic() - start)
        self._reporter.close()  # its queued reports are written first
        if self._telemetry_fh is not None:
            write_jsonl(self.telemetry.answered_between(self._written, end_seq), self._telemetry_fh)
            self._telemetry_fh.close()
        return summary

    def _report(self, first_seq: int, end_seq: int) -> None:
        """On the loop: copy what the report needs (microseconds); the reporter thread does the rest."""
        # Replies come in frame order: every frame before the last answered one is answered or lost.
        # Later ones may be in flight and are written with the next report.
        done = self._answered_end
        recent = self.telemetry.answered_between(max(first_seq, done - 500), done)
        new = self.telemetry.answered_between(self._written, done) if self._telemetry_fh is not None else None
        self._written = done
        now, captured = time.monotonic(), self.captured + self.source.dropped
        then, captured_then = self._last_report
        self._last_report = (now, captured)
        counts = {
            "mode": self.mode(),
            "fps": (captured - captured_then) / max(now - then, 1e-9),
            "frames": self.captured,
            "poses": self.received,
            "dropped": self.source.dropped,
            "hits": getattr(self.consumer, "hits", 0),
            "backend_losses": self.backend_losses,
            "backend_lies": self.lies,
        }
        assert self._reporter is not None
        self._reporter.submit(self._write_report, recent, new, counts)

    def _write_report(self, recent: np.ndarray, new: np.ndarray | None, counts: dict) -> None:
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

    def _mode_code(self) -> EdgeMode:
        if not self.cfg.edge.backend:
            return EdgeMode.LOCAL
        return EdgeMode.REMOTE if self._poses is not None and self._poses.remote else EdgeMode.RECONNECTING

    def mode(self) -> str:
        return self._mode_code().text

    def _publish_state(self, s: dict, counts: dict) -> None:
        """Every summary: the state file `lalelu check` reads and systemd's STATUS= line."""
        state = {
            **counts,
            "backend": self.cfg.edge.backend,
            "fps_wanted": self.source.fps,
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
        captured = self.captured + self.source.dropped
        pick = ("p50", "p99")
        return {
            # frames given to a pose engine, the backend's or the local one (not skipped, not dropped)
            "frames_inferred": self.captured - self.skipped,
            "frames_remote": self.captured - self.skipped - self.frames_local,
            "poses_received": self.received - self.bad_replies,
            "frames_lost": captured - self.skipped - (self.received - self.bad_replies),
            "frames_skipped": self.skipped,
            "frames_dropped_at_capture": self.source.dropped,
            "fps": round(self.captured / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            "latency_ms": {k: round(s["total"].get(k, 0.0), 3) for k in pick},
            "inference_ms": {k: round(s["inference"].get(k, 0.0), 3) for k in pick},
            "overhead_ms": {k: round(s["overhead"].get(k, 0.0), 3) for k in pick},
            "hits": getattr(self.consumer, "hits", 0),
            "backend_losses": self.backend_losses,
            "backend_lies": self.lies,
            "reconnects": self.reconnects,
            "frames_local": self.frames_local,
            "frames_lost_with_backend": self.lost_in_flight,
            "stages_ms": s,
        }


def run_edge(cfg: Config, summary_json: Path | None = None, record: Path | None = None) -> dict:
    # SIGUSR1 (`fab play-test`) would end the process by default until its handler is set below
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # The consumer chain is built before the loop: the player, recorded on its way in when asked, and
    # the monitor's feed in front of both.
    source = open_source(cfg.camera)
    with contextlib.ExitStack() as services:
        with contextlib.ExitStack() as until_loop:
            until_loop.callback(source.close)  # a camera held by a process that failed blocks the next
            feed = services.enter_context(edge_monitor(cfg, source.width, source.height, source.pixel_format))
            player = pose_consumer(cfg, "edge", source.width, source.height, feed.put_hit if feed else None)
            until_loop.pop_all()  # from here on the loop closes the camera
        consumer = player if record is None else PoseRecorder(record, source.width, source.height, player)
        loop = EdgeLoop(cfg, consumer, source, feed)
        signal.signal(signal.SIGTERM, lambda *_: loop.stop())
        signal.signal(signal.SIGINT, lambda *_: loop.stop())
        signal.signal(signal.SIGHUP, lambda *_: request_reload(player))
        signal.signal(signal.SIGUSR1, lambda *_: request_test_note(player))
        summary = loop.run()
    line = json.dumps({k: v for k, v in summary.items() if k != "stages_ms"})
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=1))
    log.info("edge stopped: %s", line)
    print(line, file=sys.stdout, flush=True)
    return summary
