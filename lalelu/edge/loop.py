"""`lalelu edge`: capture -> poses (the backend, or the local engine) -> the consumer chain, with
per-frame telemetry. The loop reads the camera and hands each frame on; where the poses come from and the
switching between backend and local engine are FailoverPoses' (failover.py), what the run reports is
EdgeReports' (reports.py), the counters and the rows are telemetry.py's."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lalelu.camera import FrameSource, open_source
from lalelu.config import Config
from lalelu.edge.failover import FailoverPoses
from lalelu.edge.monitor.feed import MonitorFeed
from lalelu.edge.monitor.process import MonitorTap, edge_monitor
from lalelu.edge.reports import EdgeReports
from lalelu.edge.telemetry import EdgeCounters, FrameTelemetry
from lalelu.gestures.consumer import PoseConsumer, pose_consumer
from lalelu.gestures.recording import PoseRecorder
from lalelu.runtime.service import RealtimeService, handle_signals

log = logging.getLogger("lalelu.edge")


class EdgeLoop:
    """One frame at a time: read it, offer it to the monitor, submit it where the poses come from; every
    pose comes back through `_deliver` to the consumer chain."""

    def __init__(
        self,
        cfg: Config,
        source: FrameSource,
        consumer: PoseConsumer,
        telemetry: FrameTelemetry,
        monitor: MonitorFeed | None = None,
    ) -> None:
        self.cfg, self.source, self.consumer, self.telemetry, self.monitor = (
            cfg,
            source,
            consumer,
            telemetry,
            monitor,
        )
        self.counters = EdgeCounters()
        self._stop = threading.Event()
        self._service: RealtimeService | None = None
        self.poses = FailoverPoses(
            cfg,
            source.pixel_format,
            source.width,
            source.height,
            self._deliver,
            consumer.all_notes_off,
            self.counters,
            telemetry,
            # kicks systemd's watchdog while the link waits for a slow backend's free slot (up to [edge]
            # reply_timeout_s: the loop working as configured, not hung); looked up at each kick, since
            # the service's watchdog starts at ready()
            keepalive=self._kick,
        )
        self.reports = EdgeReports(
            cfg,
            telemetry,
            self.counters,
            source.fps,
            lambda: source.dropped,
            lambda: getattr(consumer, "hits", 0),
        )

    def stop(self) -> None:
        self._stop.set()

    def _kick(self) -> None:
        if self._service is not None:
            self._service.watchdog.kick()

    def _deliver(
        self, seq: int, keypoints: np.ndarray | None, queue_ns: int, infer_ns: int, served_ns: int
    ) -> None:
        """Every pose, remote or local, comes through here (remote ones on the link's receiver thread)."""
        capture_ns = self.telemetry.answered(seq, queue_ns, infer_ns, served_ns)
        self.counters.received += 1
        self.reports.answered_end = seq + 1
        if keypoints is None:
            self.counters.bad_replies += 1
            return
        self.consumer.on_pose(seq, capture_ns, keypoints)

    def run(self) -> dict:
        e = self.cfg.edge
        with RealtimeService(e.cpus, e.sched_fifo, e.fifo_priority) as service, self.reports:
            self._service = service
            self.poses.open()
            service.go_realtime()
            return self._run(service)

    def _run(self, service: RealtimeService) -> dict:
        cfg, src, monitor, counters = self.cfg, self.source, self.monitor, self.counters
        log.info(
            "edge: %s %dx%d %s at %.0f fps, CPUs %s, SCHED_FIFO %s",
            cfg.camera.source,
            src.width,
            src.height,
            src.pixel_format.name,
            src.fps,
            service.affinity,
            service.fifo,
        )
        start = time.monotonic()
        end = start + cfg.edge.seconds if cfg.edge.seconds else float("inf")
        interval = cfg.edge.summary_interval_s
        next_summary = start + interval if interval else float("inf")
        first_seq = None
        end_seq = 0  # one past the last frame's number; frames dropped at capture leave holes before it
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
                    monitor.offer_frame(frame, seq, self.poses.mode)
                if first_seq is None:
                    first_seq = seq
                end_seq = seq + 1
                if not self.poses.submit(seq, capture_ns, frame):
                    counters.skipped += 1  # the backend is behind: this frame would arrive too late to matter
                counters.captured += 1
                now = time.monotonic()
                if now >= next_summary:
                    next_summary += interval
                    self.reports.periodic(first_seq, self.poses.mode)
                if now >= end:
                    break
        finally:
            try:
                self.poses.close(wait_s=2.0)
            finally:
                self.consumer.close()  # all notes off, whatever else failed
        summary = self.reports.summary(first_seq or 0, end_seq, time.monotonic() - start)
        self.reports.close(end_seq)
        return summary


@contextlib.contextmanager
def consumer_chain(
    cfg: Config, source: FrameSource, telemetry: FrameTelemetry, record: Path | None
) -> Iterator[tuple[PoseConsumer, PoseConsumer, MonitorFeed | None]]:
    """The poses' way after the loop, built in one place: the monitor's tap (the page sees every pose),
    the recorder (when asked), then the player (MIDI, OSC, the synth). Yields (the chain's head, the
    player, the monitor's feed or None); the monitor's process stops when the block ends."""
    with edge_monitor(cfg, source.width, source.height, source.pixel_format) as feed:
        player = pose_consumer(cfg, "edge", source.width, source.height, feed.put_hit if feed else None)
        head: PoseConsumer = (
            player if record is None else PoseRecorder(record, source.width, source.height, player)
        )
        if feed is not None:
            head = MonitorTap(feed, head, telemetry)
        yield head, player, feed


def run_edge(cfg: Config, summary_json: Path | None = None, record: Path | None = None) -> dict:
    # SIGUSR1 (`fab play-test`) would end the process by default until its handler is set below
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    telemetry = FrameTelemetry(1 << 16)
    # the camera is closed last, however the run ends: one a failed process still held would block the next
    with (
        open_source(cfg.camera) as source,
        consumer_chain(cfg, source, telemetry, record) as (head, player, feed),
    ):
        loop = EdgeLoop(cfg, source, head, telemetry, feed)
        handle_signals(loop.stop, player.request_reload, player.request_test_note)
        summary = loop.run()
    line = json.dumps({k: v for k, v in summary.items() if k != "stages_ms"})
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary, indent=1))
    log.info("edge stopped: %s", line)
    print(line, file=sys.stdout, flush=True)
    return summary
