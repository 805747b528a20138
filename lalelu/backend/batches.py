"""The backend's batching: the frames that have arrived, inferred together, oldest first, up to
`max_batch` of one geometry per engine call (a band's edges share their cameras' geometry, so one call in
the usual case), never waiting for more to come. With an engine that has slots (torch-cuda), a batch is
launched the moment its frames are in, while another is still on the GPU, and collected when its event
says it is done; otherwise it is inferred and waited for. Each frame's reply goes out through `send` as
soon as its batch is collected, its telemetry row is written, and its pose goes to `play` (the sound,
where it leaves from the backend). A frame whose connection was dropped meanwhile is answered to no one.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lalelu.clock import now_ns
from lalelu.engine.estimator import PoseEstimator
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.timing import TelemetryRing
from lalelu.wire.protocol import FrameHeader, Status

if TYPE_CHECKING:
    from lalelu.backend.server import Connection, Counters

log = logging.getLogger("lalelu.backend")

# A batch on the GPU this long has hung (a batch takes milliseconds): the loop stops kicking the systemd
# watchdog, which then restarts the backend, as it did when a hung GPU blocked the loop in its wait
HUNG_BATCH_S = 2.0

Send = Callable[["Connection", Status, int, int, int, int, np.ndarray], None]
Play = Callable[["Connection", FrameHeader, np.ndarray], None]


class SmClockLike(Protocol):
    mhz: int


def batch_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Engine calls by frames inferred together ({"1": calls, "2": ...}), from counts indexed by batch
    size; sizes never seen left out."""
    return {str(n): int(c) for n, c in enumerate(sizes) if c}


class BatchServing:
    """Over 200 lines because launching, collecting and answering a batch share its slots and buffers;
    split, each part would reach into the others' state."""

    def __init__(
        self,
        estimator: PoseEstimator,
        max_batch: int,
        batches_in_flight: int,
        counters: Counters,
        telemetry: TelemetryRing,
        send: Send,
        play: Play,
        gpu_clock: SmClockLike | None = None,
    ) -> None:
        self.estimator, self.counters, self.telemetry, self.gpu_clock = (
            estimator,
            counters,
            telemetry,
            gpu_clock,
        )
        self._send, self._play = send, play
        # an engine that cannot batch (LiteRT, a stand-in) is served one frame at a time
        self.max_batch = max(1, min(max_batch, int(getattr(estimator, "max_batch", 1))))
        self.batch_sizes = np.zeros(self.max_batch + 1, np.int64)  # engine calls by number of frames
        self.ready: list[Connection] = []  # connections with a complete frame, in arrival order
        self._batch: list[Connection] = []
        self._batch_frames: list[np.ndarray] = []
        self._batch_out = np.zeros((self.max_batch, NUM_KEYPOINTS, 3), np.float32)
        self._sizes_reported = self.batch_sizes.copy()
        self._reported_at = time.monotonic()
        # An engine with slots (torch-cuda) takes a batch while another is still on the GPU: a frame that
        # arrives then starts at once instead of waiting for the running batch. Serial (max_batch 1) waits.
        slots = min(int(getattr(estimator, "slots", 0)), batches_in_flight)
        self.slots = slots if self.max_batch > 1 and slots > 1 else 0
        self._slot_conns: list[list[Connection]] = [[] for _ in range(self.slots)]
        self._slot_rusage: list[resource.struct_rusage | None] = [None] * self.slots
        self.in_flight: list[tuple[int, int]] = []  # (slot, launched ns), oldest first
        self._said_hung = False

    def band_state(self, connections: Iterable[Connection]) -> dict:
        """Since the last call: each connection that sent frames (peer, frames a second) and the engine
        calls by frames per call. Called from the loop (microseconds: a few small copies)."""
        now = time.monotonic()
        elapsed = max(now - self._reported_at, 1e-3)
        sizes = self.batch_sizes - self._sizes_reported
        self._sizes_reported[:] = self.batch_sizes
        self._reported_at = now
        edges = []
        for conn in connections:
            frames = conn.served - conn.served_reported
            conn.served_reported = conn.served
            if frames:
                edges.append({"peer": conn.peer, "fps": round(frames / elapsed, 1)})
        calls = int(sizes.sum())
        return {
            "edges": sorted(edges, key=lambda e: e["peer"]),
            "engine_calls_by_frames": batch_histogram(sizes),
            "mean_batch": float((sizes * np.arange(sizes.size)).sum() / calls) if calls else 0.0,
            "max_batch_seen": int(np.flatnonzero(sizes).max()) if calls else 0,
            "max_batch": self.max_batch,
            "interval_s": round(elapsed, 2),
        }

    def hung(self) -> bool:
        """Whether the oldest batch in flight has been on the GPU for HUNG_BATCH_S (said once in the log)."""
        if not self.in_flight or now_ns() - self.in_flight[0][1] < HUNG_BATCH_S * 1e9:
            return False
        if not self._said_hung:
            self._said_hung = True
            log.error(
                "a batch has been on the GPU for over %g s: the engine hangs; the watchdog is no longer "
                "kicked, so systemd restarts the backend",
                HUNG_BATCH_S,
            )
        return True

    def serve_ready(self) -> None:
        """Infer every frame that has arrived, oldest first: up to max_batch of one geometry per engine
        call (edges of one band share their cameras' geometry, so one call in the usual case)."""
        ready, batch = self.ready, self._batch
        while ready and (not self.slots or len(self.in_flight) < self.slots):
            first = ready[0]
            batch.clear()
            keep = 0
            for conn in ready:
                if conn.sock.fileno() < 0:
                    conn.ready = None  # dropped since its frame arrived: nobody to answer
                elif len(batch) < self.max_batch and conn.reader.geometry == first.reader.geometry:
                    batch.append(conn)
                else:
                    ready[keep] = conn
                    keep += 1
            del ready[keep:]
            if batch and self.slots:
                self._launch(batch)
            elif batch:
                self._infer(batch)

    def _frames_of(self, batch: list[Connection]) -> list[np.ndarray]:
        frames = self._batch_frames
        frames.clear()
        for conn in batch:
            assert conn.reader.pixels is not None
            frames.append(conn.reader.pixels)
        return frames

    def _launch(self, batch: list[Connection]) -> None:
        """Start the batch in a free slot; its replies go out when _collect_done finds it finished."""
        header = batch[0].ready
        assert header is not None
        frames = self._frames_of(batch)
        before = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = now_ns()
        try:
            slot = self.estimator.launch_batch(frames, header.pixel_format, header.width, header.height)
        except Exception:  # an engine failure must not take down the other edges
            log.exception(
                "inference failed for %d frame(s) from %s", len(batch), ", ".join(c.peer for c in batch)
            )
            self._answer(batch, Status.ENGINE_ERROR, t0, now_ns(), before, before)
            return
        self._slot_conns[slot][:] = batch
        self._slot_rusage[slot] = before
        self.in_flight.append((slot, t0))

    def collect_done(self) -> None:
        """Answer every batch in flight that has finished (each edge has one frame at most in flight, so
        finishing out of launch order reorders nobody's replies)."""
        k = 0
        while k < len(self.in_flight):
            slot, t0 = self.in_flight[k]
            try:
                done = self.estimator.batch_done(slot)
            except Exception:
                done = True  # collect_batch raises it again and answers the batch ENGINE_ERROR
            if not done:
                k += 1
                continue
            del self.in_flight[k]
            batch = self._slot_conns[slot]
            header = batch[0].ready
            assert header is not None
            status = Status.OK
            try:
                self.estimator.collect_batch(
                    slot, header.pixel_format, header.width, header.height, self._batch_out
                )
            except Exception:
                log.exception(
                    "inference failed for %d frame(s) from %s", len(batch), ", ".join(c.peer for c in batch)
                )
                status = Status.ENGINE_ERROR
            before = self._slot_rusage[slot]
            assert before is not None
            self._answer(batch, status, t0, now_ns(), before, resource.getrusage(resource.RUSAGE_THREAD))
            batch.clear()

    def _infer(self, batch: list[Connection]) -> None:
        """The batch inferred and waited for (an engine without slots, or max_batch 1)."""
        n = len(batch)
        frames = self._frames_of(batch)
        header = batch[0].ready
        assert header is not None
        fmt, width, height = header.pixel_format, header.width, header.height
        est = self.estimator
        before = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = now_ns()
        status = Status.OK
        try:
            if n == 1:
                est.estimate(frames[0], fmt, width, height, self._batch_out[0])
            else:
                est.estimate_batch(frames, fmt, width, height, self._batch_out)
        except Exception:  # an engine failure must not take down the other edges
            log.exception("inference failed for %d frame(s) from %s", n, ", ".join(c.peer for c in batch))
            status = Status.ENGINE_ERROR
        self._answer(batch, status, t0, now_ns(), before, resource.getrusage(resource.RUSAGE_THREAD))

    def _answer(
        self,
        batch: list[Connection],
        status: Status,
        t0: int,
        t1: int,
        before: resource.struct_rusage,
        after: resource.struct_rusage,
    ) -> None:
        """Each frame's reply (poses from _batch_out), telemetry row and pose to the sound consumer."""
        n = len(batch)
        est = self.estimator
        self.counters.frames += n
        self.counters.batches += 1
        self.batch_sizes[n] += 1
        sm_mhz = self.gpu_clock.mhz if self.gpu_clock is not None else 0
        counted = False
        for k, conn in enumerate(batch):
            frame, conn.ready = conn.ready, None
            assert frame is not None
            if conn.sock.fileno() < 0:
                continue  # dropped while its frame was on the GPU: no reply, and no pose to play
            conn.served += 1
            keypoints = self._batch_out[k]
            self._send(
                conn, status, frame.seq, conn.reader.recv_ns, t0, t1, keypoints
            )  # drops conn alone if it fails
            replied = now_ns()
            row = self.telemetry.next_row()
            row["seq"], row["capture_ns"] = frame.seq, frame.capture_ns
            row["first_byte_ns"], row["received_ns"], row["replied_ns"] = (
                conn.reader.first_byte_ns,
                conn.reader.recv_ns,
                replied,
            )
            row["pre_ns"], row["engine_ns"], row["post_ns"] = est.pre_ns, est.engine_ns, est.post_ns
            row["device_ns"] = est.device_ns
            row["batch"] = n
            # the batch's thread counters on its first row only, so that a batch is not counted n times (with
            # batches in flight they span launch to collection, and two batches' spans can overlap)
            first, counted = not counted, True
            row["involuntary_switches"] = after.ru_nivcsw - before.ru_nivcsw if first else 0
            row["voluntary_switches"] = after.ru_nvcsw - before.ru_nvcsw if first else 0
            row["minor_faults"] = after.ru_minflt - before.ru_minflt if first else 0
            row["major_faults"] = after.ru_majflt - before.ru_majflt if first else 0
            row["sm_mhz"] = sm_mhz
            if status == Status.OK and conn.sock.fileno() >= 0:
                self._play(conn, frame, keypoints)
