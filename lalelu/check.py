"""`lalelu check`: is this host ready to play? A go / warn / no-go table in seconds; exit 1 on any no-go.

Warnings (no isolated CPUs, a governor other than performance) slow the instrument down but do not stop
it; a no-go (no frames, no model, no backend, no sound output, latency over the limit) does.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np

from lalelu.config import Config
from lalelu.errors import LaleluError
from lalelu.protocol import PixelFormat, encode_frame_header, round_trip
from lalelu.realtime import GOVERNOR, ISOLATED_CPUS, read_kernel_value
from lalelu.timing import summarize_ns

GO, WARN, NO_GO = "go", "warn", "NO-GO"


@dataclass
class Check:
    name: str
    verdict: str
    detail: str


def check_cpus(cfg: Config, role: str) -> Check:
    isolated = read_kernel_value(ISOLATED_CPUS)
    wanted = cfg.edge.cpus if role == "edge" else cfg.backend.cpus
    if not isolated:
        return Check(
            "isolated CPUs", WARN, f"none isolated (kernel line: isolcpus=); app pinned to {wanted or 'all'}"
        )
    return Check("isolated CPUs", GO, f"isolated {isolated}; app pinned to {wanted or 'all'}")


def check_governor() -> Check:
    gov = read_kernel_value(GOVERNOR)
    if not gov:
        return Check("governor", WARN, "no cpufreq here (a VM?): cannot tell")
    return Check("governor", GO if gov == "performance" else WARN, gov)


def check_camera(cfg: Config, seconds: float = 1.0) -> Check:
    from edge_app.cameras import open_source

    try:
        src = open_source(cfg.camera)
    except LaleluError as exc:
        return Check("camera", NO_GO, str(exc))
    n, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            if src.read() is None:
                break
            n += 1
    finally:
        src.close()
    fps = n / max(1e-9, time.monotonic() - t0)
    ok = fps >= 0.9 * cfg.camera.fps
    return Check(
        "camera", GO if ok else NO_GO, f"{cfg.camera.source}: {fps:.1f} fps of {cfg.camera.fps:g} configured"
    )


def check_output(cfg: Config) -> Check:
    from lalelu.gestures.consumer import open_output

    try:
        out = open_output(cfg.output)
    except Exception as exc:  # the output's own message names the port and the fix
        return Check("sound output", NO_GO, str(exc))
    out.close()
    return Check("sound output", GO, cfg.output.kind)


def check_backend(address: str, frames: int, p99_limit_ms: float) -> list[Check]:
    host, _, port = address.rpartition(":")
    w, h = 320, 240
    frame = np.full((h, w, 3), 90, np.uint8).tobytes()
    out = np.zeros((17, 3), np.float32)
    rtts = np.zeros(frames, np.int64)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            for i in range(frames):
                t0 = time.perf_counter_ns()
                reply = round_trip(sock, encode_frame_header(i, 1, PixelFormat.RGB888, w, h), frame, out)
                if int(reply.status) != 0:
                    return [Check("backend", NO_GO, f"{address} answered status {int(reply.status)}")]
                rtts[i] = time.perf_counter_ns() - t0
    except (OSError, ValueError) as exc:
        return [Check("backend", NO_GO, f"{address} unreachable ({exc}): is `lalelu backend` running there?")]
    s = summarize_ns(rtts)
    verdict = GO if s["p99"] <= p99_limit_ms else NO_GO
    return [
        Check("backend", GO, f"{address}: model loaded and answering, first reply {rtts[0] / 1e6:.2f} ms"),
        Check(
            "live latency",
            verdict,
            f"{frames} frames: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms (limit {p99_limit_ms:g} ms)",
        ),
    ]


def check_local_model(cfg: Config, frames: int, p99_limit_ms: float) -> list[Check]:
    from lalelu.engines import engine_from_config

    try:
        engine = engine_from_config(cfg.engine, warm=True)
    except LaleluError as exc:
        return [Check("model", NO_GO, str(exc))]
    out = np.zeros((17, 3), np.float32)
    times = np.zeros(frames, np.int64)
    for i in range(frames):
        t0 = time.perf_counter_ns()
        engine.infer(out)
        times[i] = time.perf_counter_ns() - t0
    engine.close()
    s = summarize_ns(times)
    return [
        Check("model", GO, f"{cfg.engine.kind} loaded and warm"),
        Check(
            "live latency",
            GO if s["p99"] <= p99_limit_ms else NO_GO,
            f"{frames} local inferences: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms (limit {p99_limit_ms:g} ms)",
        ),
    ]


def run_checks(cfg: Config, role: str, frames: int = 50, p99_limit_ms: float = 50.0) -> list[Check]:
    checks = [check_cpus(cfg, role), check_governor()]
    if role == "edge":
        checks.append(check_camera(cfg))
        if cfg.edge.backend:
            checks += check_backend(cfg.edge.backend, frames, p99_limit_ms)
        else:
            checks += check_local_model(cfg, frames, p99_limit_ms)
    else:
        checks += check_local_model(cfg, frames, p99_limit_ms)
    if cfg.output.where == role and cfg.output.kind != "none":
        checks.append(check_output(cfg))
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{c.verdict:<6} {c.name:<{width}}  {c.detail}" for c in checks]
    nogo = [c.name for c in checks if c.verdict == NO_GO]
    lines.append("READY TO PLAY" if not nogo else f"NOT READY: {', '.join(nogo)}")
    return "\n".join(lines)
