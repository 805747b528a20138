"""The edge's side of the monitor: the consumer that hands every pose to the feed, and the monitor's
process, started beside the loop and stopped with it. A monitor that cannot start is a warning in the
log (the server's own message names the cause), never a reason for the instrument not to play."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator

import numpy as np

from lalelu.config import Config
from lalelu.drawing import page_description
from lalelu.edge.monitor.feed import MonitorFeed
from lalelu.edge.monitor.settings import MonitorSettings
from lalelu.edge.telemetry import FrameTelemetry
from lalelu.frames import PixelFormat
from lalelu.gestures.consumer import PoseConsumer, resolve_mapping
from lalelu.gestures.mapping import load_mapping

log = logging.getLogger("lalelu.monitor")


class MonitorTap:
    """A pose consumer in front of the player: the pose and its inference time into the feed, then on."""

    def __init__(self, feed: MonitorFeed, inner: PoseConsumer, telemetry: FrameTelemetry) -> None:
        self.feed, self.inner, self.telemetry = feed, inner, telemetry

    @property
    def hits(self) -> int:
        return getattr(self.inner, "hits", 0)

    def on_pose(self, seq: int, capture_ns: int, keypoints: np.ndarray) -> None:
        self.feed.put_pose(seq, capture_ns, self.telemetry.infer_ns(seq), keypoints)
        self.inner.on_pose(seq, capture_ns, keypoints)

    def all_notes_off(self) -> None:
        self.inner.all_notes_off()

    def request_reload(self) -> None:
        self.inner.request_reload()

    def request_test_note(self) -> None:
        self.inner.request_test_note()

    def close(self) -> None:
        self.inner.close()


class MonitorProcess:
    def __init__(self, settings: MonitorSettings, feed: MonitorFeed) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lalelu.edge.monitor", str(feed.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None
        # The token through a pipe, never in argv (ps) or the environment; a monitor that died at once
        # says why itself.
        with contextlib.suppress(BrokenPipeError), self.proc.stdin:
            self.proc.stdin.write(settings.to_json().encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc.returncode:
            log.warning(
                "the monitor page had stopped (exit code %d): see its message above", self.proc.returncode
            )


@contextlib.contextmanager
def edge_monitor(cfg: Config, width: int, height: int, fmt: PixelFormat) -> Iterator[MonitorFeed | None]:
    """The feed and the monitor's process for an edge's session; None when [monitor] is off."""
    if not cfg.monitor.enabled:
        yield None
        return
    feed = MonitorFeed.create(width, height, fmt)
    try:
        page = page_description(load_mapping(resolve_mapping(cfg.output.mapping)), width, height)
        process = MonitorProcess(MonitorSettings(cfg.monitor, tuple(cfg.edge.cpus), page), feed)
        try:
            yield feed
        finally:
            process.close()
    finally:
        feed.close()
