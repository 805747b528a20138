"""`lalelu backend`: load and warm the engine, pin, serve."""

from __future__ import annotations

import json
import logging
import signal
from functools import partial
from pathlib import Path

from backend_app.server import InferenceServer
from lalelu.config import Config
from lalelu.engines import engine_from_config
from lalelu.gestures.consumer import gesture_consumer, request_reload
from lalelu.inference import PoseEstimator
from lalelu.realtime import freeze_gc, pin_to_cpus, try_sched_fifo
from lalelu.sdnotify import Watchdog, notify
from lalelu.timing import summarize_ns

log = logging.getLogger("lalelu.backend")


def run_backend(cfg: Config, seconds: float = 0.0, ready_file: Path | None = None) -> dict:
    affinity = pin_to_cpus(cfg.backend.cpus)  # before the engine starts its threads, so they inherit it
    engine = engine_from_config(cfg.engine)
    consumer_factory = None
    if cfg.output.where == "backend" and cfg.output.kind != "none":
        consumer_factory = partial(gesture_consumer, cfg.output)
    server = InferenceServer(
        PoseEstimator(engine),
        cfg.backend.listen_host,
        cfg.backend.port,
        cfg.backend.max_payload,
        tuple(cfg.backend.allow),
        consumer_factory,
    )
    fifo = try_sched_fifo(cfg.backend.fifo_priority) if cfg.backend.sched_fifo else False
    log.info(
        "backend %s on %s:%d, engine %s (input %s %s), CPUs %s, SCHED_FIFO %s",
        server.address[0],
        *server.address,
        engine.name,
        engine.input.shape,
        engine.input.dtype,
        affinity,
        fifo,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    signal.signal(signal.SIGHUP, lambda *_: request_reload(server.consumer))  # `systemctl reload`
    if ready_file is not None:  # written whole, then renamed: a reader never sees half of it
        partial_file = ready_file.with_name(ready_file.name + ".part")
        partial_file.write_text(
            json.dumps(
                {"host": server.address[0], "port": server.address[1], "cpus": affinity, "sched_fifo": fifo}
            )
        )
        partial_file.replace(ready_file)
    freeze_gc()

    def report(srv: InferenceServer) -> None:
        infer = summarize_ns(srv.telemetry.recent()[-1000:]["backend_infer_ns"])
        log.info(
            "frames %d, infer p50 %.2f ms p99 %.2f ms, counters %s",
            srv.counters.frames,
            infer.get("p50", 0),
            infer.get("p99", 0),
            srv.counters.as_dict(),
        )

    watchdog = Watchdog()
    notify("READY=1")
    server.serve(seconds, on_tick=report, tick_s=5.0, watchdog=watchdog)
    notify("STOPPING=1")
    watchdog.close()
    engine.close()
    rows = server.telemetry.recent()
    summary = {"counters": server.counters.as_dict(), "inference_ms": summarize_ns(rows["backend_infer_ns"])}
    log.info("backend stopped: %s", json.dumps(summary))
    return summary
