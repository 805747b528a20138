"""`lalelu backend`: load and warm the engine, pin, serve."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np

from lalelu.backend.batches import batch_histogram
from lalelu.backend.server import InferenceServer
from lalelu.config import Config, load_link_key
from lalelu.engine import GPU_ENGINES, engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.engine.gpu_clock import SmClockSampler
from lalelu.frames import PixelFormat
from lalelu.gestures.consumer import LogConsumer, pose_consumer, sound_leaves_here
from lalelu.runtime.reporter import Reporter
from lalelu.runtime.sdnotify import StartingUp
from lalelu.runtime.service import RealtimeService, handle_signals
from lalelu.runtime.state import BACKEND_STATE_NAME, state_path, write_state, write_whole
from lalelu.timing import backend_summary, frames_per_call, write_jsonl

log = logging.getLogger("lalelu.backend")


def _log_report(
    rows: np.ndarray, counters: dict[str, int], out: IO[str] | None, band: dict, state_file: Path | None
) -> None:
    """Runs on the reporter thread."""
    s = backend_summary(rows)
    if state_file is not None:
        band.update(
            served_p50_ms=s["served"].get("p50", 0.0),
            served_p99_ms=s["served"].get("p99", 0.0),
            counters=counters,
            pid=os.getpid(),
        )
        try:
            write_state(state_file, band)
        except OSError as exc:
            log.warning(
                "cannot write the state file %s (%s); `lalelu check` will not see it", state_file, exc
            )
    batch = rows["batch"][rows["batch"] > 0]
    log.info(
        "frames %d | served p50 %.2f p99 %.2f ms (engine p50 %.2f p99 %.2f, frames per call mean %.2f max %d)"
        " | counters %s",
        counters["frames"],
        s["served"].get("p50", 0),
        s["served"].get("p99", 0),
        s["engine"].get("p50", 0),
        s["engine"].get("p99", 0),
        frames_per_call(batch),
        int(batch.max()) if batch.size else 0,
        counters,
    )
    if out is not None:
        write_jsonl(rows, out)


def run_backend(cfg: Config, seconds: float = 0.0, ready_file: Path | None = None) -> dict:
    b = cfg.backend
    key = load_link_key(b.key_file, "backend")  # before the engine's seconds of loading: a typo shows at once
    with contextlib.ExitStack() as stack:
        service = stack.enter_context(RealtimeService(b.cpus, b.sched_fifo, b.fifo_priority))
        # Loading can take minutes (torch.compile on a cold cache): systemd and `lalelu demo` are told it
        # is still starting, with what it is doing, until it serves
        heartbeat = ready_file.with_name(ready_file.name + ".starting") if ready_file is not None else None
        with StartingUp(f"loading the engine ({cfg.engine.kind})", heartbeat) as starting:
            engine = stack.enter_context(engine_from_config(cfg.engine))
            period_s = cfg.backend.gpu_clock_period_ms / 1000
            gpu_clock = SmClockSampler(period_s=period_s) if engine.name in GPU_ENGINES and period_s else None
            if gpu_clock is not None:
                stack.callback(gpu_clock.close)
            consumer_factory = None
            if sound_leaves_here(cfg, "backend"):  # made at the first frame: its size is the edge's
                consumer_factory = partial(pose_consumer, cfg, "backend")
            estimator = PoseEstimator(engine)
            # The camera's geometry, where this file names it: its first frame then costs no set-up (a GPU
            # engine captures a CUDA graph per geometry: 30-35 ms on the H100, paid here instead).
            cam = cfg.camera
            starting.phase = f"preparing {cam.width}x{cam.height} {cam.pixel_format} frames on {engine.name}"
            estimator.prepare(
                PixelFormat.named(cam.pixel_format),
                cam.width,
                cam.height,
                max_batch=b.max_batch,
                in_flight=b.batches_in_flight,
            )
        server = InferenceServer(
            estimator,
            cfg.backend.listen_host,
            cfg.backend.port,
            cfg.backend.max_payload,
            tuple(cfg.backend.allow),
            consumer_factory,
            gpu_clock,
            busy_poll_s=cfg.backend.busy_poll_ms / 1000,
            key=key,
            max_fps_per_edge=cfg.backend.max_fps_per_edge,
            max_batch=b.max_batch,
            batches_in_flight=b.batches_in_flight,
        )
        telemetry = stack.enter_context(open(cfg.backend.telemetry, "w")) if cfg.backend.telemetry else None
        reporter = stack.enter_context(Reporter())  # closed before the file: its writes are done first
        service.go_realtime()
        affinity, fifo = service.affinity, service.fifo
        log.info(
            "backend %s on %s:%d, engine %s (input %s %s, batches of up to %d, %d in flight), CPUs %s, SCHED_FIFO %s",
            server.address[0],
            *server.address,
            engine.name,
            engine.input.shape,
            engine.input.dtype,
            server.max_batch,
            max(1, server.slots),
            affinity,
            fifo,
        )
        handle_signals(server.stop, lambda: (server.consumer or LogConsumer()).request_reload())
        if ready_file is not None:
            address = {
                "host": server.address[0],
                "port": server.address[1],
                "cpus": affinity,
                "sched_fifo": fifo,
            }
            write_whole(ready_file, json.dumps(address))
        written = 0
        state_file = state_path(b.state_file, BACKEND_STATE_NAME)

        def report(srv: InferenceServer) -> None:
            # On the loop: copy the new rows (microseconds); the reporter thread does the rest.
            nonlocal written
            end = srv.telemetry.count
            reporter.submit(
                _log_report,
                srv.telemetry.rows_between(written, end),
                srv.counters.as_dict(),
                telemetry,
                srv.band_state(),
                state_file,
            )
            written = end

        service.ready()
        server.serve(seconds, on_tick=report, tick_s=5.0, watchdog=service.watchdog)  # closes the server
        if telemetry is not None:
            reporter.submit(
                write_jsonl, server.telemetry.rows_between(written, server.telemetry.count), telemetry
            )
        rows = server.telemetry.recent()
        stages = backend_summary(rows)
        summary = {
            "counters": server.counters.as_dict(),
            "batch_sizes": batch_histogram(server.batch_sizes),
            "inference_ms": stages["engine"],
            "stages_ms": stages,
        }
    log.info("backend stopped: %s", json.dumps(summary))
    return summary
