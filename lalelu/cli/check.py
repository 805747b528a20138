"""`lalelu check`: is this host ready to play? A go / warn / no-go table in seconds; exit 1 on any no-go.

Warnings (no isolated CPUs, a governor other than performance) slow the instrument down but do not stop
it; a no-go (no frames, no model, no backend, no sound output, latency over the limit) does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from lalelu.config import Config, load_link_key
from lalelu.edge.modes import EdgeMode
from lalelu.errors import ConfigError, LaleluError
from lalelu.frames import PixelFormat
from lalelu.gestures.consumer import sound_leaves_here
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.runtime.realtime import GOVERNOR, ISOLATED_CPUS, cpu_list, read_kernel_value
from lalelu.runtime.state import (
    BACKEND_STATE_NAME,
    SERVICE_BACKEND_STATE,
    SERVICE_STATE,
    band_line,
    read_state,
    state_path,
)
from lalelu.timing import summarize_ns
from lalelu.wire.link import BackendUnavailable, answered, connect_backend
from lalelu.wire.protocol import (
    ProtocolError,
)

GO, WARN, NO_GO = "go", "warn", "NO-GO"


@dataclass
class Check:
    name: str
    verdict: str
    detail: str


def isolation_check(cmdline: str, isolated_text: str, wanted: set[int], role: str) -> Check:
    """The kernel line's isolcpus= against what the kernel isolated, and where the app is pinned."""
    isolated = cpu_list(isolated_text)
    asked = next((t.split("=", 1)[1] for t in cmdline.split() if t.startswith("isolcpus=")), "")
    if asked and not isolated:
        return Check(
            "isolated CPUs", NO_GO, f"the kernel line asks isolcpus={asked} but none are isolated: reboot"
        )
    if not isolated:
        return Check(
            "isolated CPUs",
            WARN,
            f"none isolated (kernel line: isolcpus=); app pinned to {sorted(wanted) or 'all'}",
        )
    if not wanted or not wanted <= isolated:
        return Check(
            "isolated CPUs",
            WARN,
            f"isolated {sorted(isolated)} but the {role} is pinned to {sorted(wanted) or 'all'}: "
            f"set [{role}] cpus to isolated ones",
        )
    return Check("isolated CPUs", GO, f"isolated {sorted(isolated)}; {role} pinned to {sorted(wanted)}")


def check_cpus(cfg: Config, role: str) -> Check:
    wanted = set(cfg.edge.cpus if role == "edge" else cfg.backend.cpus)
    return isolation_check(read_kernel_value("/proc/cmdline"), read_kernel_value(ISOLATED_CPUS), wanted, role)


def service_pid(role: str) -> tuple[int, str]:
    """(MainPID, ActiveState) of lalelu-<role>; pid 0 when it is not running or there is no systemd.
    The state is "not-found" when no such unit is installed (a development machine)."""
    if shutil.which("systemctl") is None:
        return 0, "no systemd here"
    r = subprocess.run(
        [
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "-p",
            "ActiveState",
            "-p",
            "LoadState",
            "--value",
            f"lalelu-{role}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    fields = r.stdout.split()
    if r.returncode != 0 or len(fields) < 3 or not fields[0].isdigit():
        return 0, "unknown"
    pid, active, load = int(fields[0]), fields[1], fields[2]
    return pid, active if load == "loaded" else load


def live_from_state(
    state: dict | None, fps_wanted: float, p99_limit_ms: float, now: float, min_fps_ratio: float = 0.9
) -> list[Check]:
    """Camera rate, latency and inference mode of the running edge service, from the state file it
    rewrites at every summary (`lalelu.runtime.state`): the camera is the service's while it plays."""
    if state is None:
        return [
            Check("camera", WARN, f"the running edge has written no state yet ({SERVICE_STATE}): wait 10 s")
        ]
    age = now - float(state.get("time", 0))
    interval = float(state.get("summary_interval_s") or 5.0)
    if age > 3 * interval + 5:
        return [
            Check(
                "camera",
                NO_GO,
                f"the running edge's state is {age:.0f} s old (it reports every {interval:g} s): "
                "its loop is stuck; `journalctl -u lalelu-edge`",
            )
        ]
    fps, p50, p99 = float(state["fps"]), float(state["latency_p50_ms"]), float(state["latency_p99_ms"])
    checks = [
        Check(
            "camera",
            GO if fps >= min_fps_ratio * fps_wanted else NO_GO,
            f"in use by the running edge: {fps:.1f} fps of {fps_wanted:g} configured",
        ),
        Check(
            "live latency",
            GO if p99 <= p99_limit_ms else NO_GO,
            f"the running edge, last 500 frames: p50 {p50:.2f} ms, p99 {p99:.2f} ms (limit {p99_limit_ms:g} ms)",
        ),
    ]
    mode, backend = str(state.get("mode", "")), str(state.get("backend", ""))
    if backend:
        checks.append(
            Check("inference", GO, f"on the backend {backend}")
            if mode == EdgeMode.REMOTE.text
            else Check(
                "inference",
                WARN,
                f"{mode}: the backend {backend} does not answer; playing on the local model",
            )
        )
    else:
        checks.append(Check("inference", GO, "local (no backend configured)"))
    return checks


def check_running_edge(cfg: Config, p99_limit_ms: float, min_fps_ratio: float = 0.9) -> list[Check]:
    path = state_path(cfg.edge.state_file) or SERVICE_STATE
    return live_from_state(read_state(path), cfg.camera.fps, p99_limit_ms, time.time(), min_fps_ratio)


def band_from_state(state: dict | None, now: float, report_s: float = 5.0) -> Check:
    """The running backend's edges and batches, from the state file it rewrites every `report_s`."""
    if state is None:
        return Check(
            "band", WARN, f"the running backend has written no state yet ({SERVICE_BACKEND_STATE}): wait 10 s"
        )
    age = now - float(state.get("time", 0))
    if age > 3 * report_s + 5:
        return Check(
            "band",
            NO_GO,
            f"the running backend's state is {age:.0f} s old (it reports every {report_s:g} s): its loop is "
            "stuck; `journalctl -u lalelu-backend`",
        )
    if not state.get("edges"):
        return Check("band", WARN, f"no edge sent frames in the last {state.get('interval_s', report_s):g} s")
    return Check("band", GO, band_line(state))


def check_running_backend(cfg: Config) -> Check:
    path = state_path(cfg.backend.state_file, BACKEND_STATE_NAME) or SERVICE_BACKEND_STATE
    return band_from_state(read_state(path), time.time())


def check_service(role: str, pid: int, state: str) -> Check:
    """The systemd service of this role (`service_pid`): running, pinned and real-time?"""
    unit = f"lalelu-{role}"
    if not pid:
        # installed but stopped means this host does not play; no unit at all is a machine without one
        verdict = WARN if state in ("not-found", "no systemd here", "unknown") else NO_GO
        return Check("service", verdict, f"{unit} is not running ({state}): `systemctl start {unit}` to play")
    try:
        cpus = sorted(os.sched_getaffinity(pid))
        fifo = os.sched_getscheduler(pid) == os.SCHED_FIFO
    except OSError as exc:
        return Check("service", WARN, f"{unit} pid {pid}: cannot read its scheduling ({exc})")
    isolated = cpu_list(read_kernel_value(ISOLATED_CPUS))
    pinned = bool(isolated) and set(cpus) <= isolated
    detail = f"{unit} pid {pid} on CPUs {cpus}{' (isolated)' if pinned else ''}, {'SCHED_FIFO' if fifo else 'normal scheduler'}"
    return Check("service", GO if pinned and fifo else WARN, detail)


FIRMWARE_THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"
THERMAL_ZONE = "/sys/class/thermal/thermal_zone0/temp"
# The Raspberry Pi firmware's get_throttled bits: now (0-3) and since boot (16-19)
THROTTLE_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}


def read_throttled() -> int | None:
    text = read_kernel_value(FIRMWARE_THROTTLED)
    if not text and shutil.which("vcgencmd"):
        r = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
        text = r.stdout.strip().partition("=")[2]
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def throttle_check(flags: int | None, temp_c: float | None) -> Check:
    temp = f"{temp_c:.1f} °C" if temp_c is not None else "temperature unknown"
    if flags is None:
        verdict = WARN if temp_c is not None and temp_c >= 80 else GO
        return Check("power & heat", verdict, f"{temp}; no firmware throttling flags (not a Raspberry Pi)")
    now = [name for bit, name in THROTTLE_BITS.items() if flags & (1 << bit)]
    since_boot = [name for bit, name in THROTTLE_BITS.items() if flags & (1 << (bit + 16))]
    if now:
        hint = "use the official power supply" if flags & 1 else "cool the Pi (heatsink, fan)"
        return Check("power & heat", NO_GO, f"{temp}; now: {', '.join(now)} (0x{flags:x}): {hint}")
    if since_boot or (temp_c is not None and temp_c >= 80):
        earlier = (
            f"since boot: {', '.join(since_boot)} (0x{flags:x})" if since_boot else "near the 85 °C limit"
        )
        return Check("power & heat", WARN, f"{temp}; {earlier}")
    return Check("power & heat", GO, f"{temp}; never throttled since boot")


def check_power_and_heat() -> Check:
    milli = read_kernel_value(THERMAL_ZONE)
    temp_c = int(milli) / 1000 if milli.lstrip("-").isdigit() else None
    return throttle_check(read_throttled(), temp_c)


def check_governor() -> Check:
    gov = read_kernel_value(GOVERNOR)
    if not gov:
        return Check("governor", WARN, "no cpufreq here (a VM?): cannot tell")
    return Check("governor", GO if gov == "performance" else WARN, gov)


def check_camera(cfg: Config, seconds: float = 1.0, min_fps_ratio: float = 0.9) -> Check:
    from lalelu.camera import open_source

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
    ok = fps >= min_fps_ratio * cfg.camera.fps
    return Check(
        "camera", GO if ok else NO_GO, f"{cfg.camera.source}: {fps:.1f} fps of {cfg.camera.fps:g} configured"
    )


def check_output(cfg: Config) -> Check:
    from lalelu.output import open_output

    try:
        with open_output(cfg.output):
            pass
    except Exception as exc:  # the output's own message names the port and the fix
        return Check("sound output", NO_GO, str(exc))
    return Check("sound output", GO, cfg.output.kind)


CHECK_FRAME_NS = 5_000_000  # the check's frames, 200 a second at most: a fast camera's rate


def check_backend(address: str, frames: int, p99_limit_ms: float, key: bytes = b"") -> list[Check]:
    w, h = 320, 240
    frame = np.full((h, w, 3), 90, np.uint8).tobytes()
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    rtts = np.zeros(frames, np.int64)
    try:
        # a backend slower than the limit allows is reported as slow below, not as unreachable here
        sock = connect_backend(address, max(5.0, p99_limit_ms / 1000), key)
    except BackendUnavailable as exc:
        return [Check("backend", NO_GO, f"{address} unreachable: {exc}")]
    try:
        with sock:
            next_ns = time.perf_counter_ns()
            for i in range(frames):
                # paced like a 200-fps camera: back to back, a fast GPU backend would answer BUSY (more than
                # [backend] max_fps_per_edge from one host), which is not what an edge sees
                while (t0 := time.perf_counter_ns()) < next_ns:
                    time.sleep((next_ns - t0) / 1e9)
                next_ns = t0 + CHECK_FRAME_NS
                answered(sock, i, PixelFormat.RGB888, w, h, frame, out)
                rtts[i] = time.perf_counter_ns() - t0
    except BackendUnavailable as exc:
        return [Check("backend", NO_GO, f"{address}: {exc}")]
    except (OSError, ProtocolError) as exc:
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


def engine_device(engine: object) -> str:
    """Where the engine runs, for the check's line: " on <GPU name>", " on the CPU", or "" (unknown)."""
    device = getattr(engine, "device", None)
    if getattr(device, "type", "") == "cuda":
        import torch

        return f" on {torch.cuda.get_device_name(device)}"
    return " on the CPU" if getattr(engine, "name", "") == "litert" else ""


def unused_gpu_check(engine_name: str, nvidia_device: str = "/dev/nvidia0") -> Check | None:
    """A warning where the host has an NVIDIA GPU and the model runs on the CPU all the same."""
    if engine_name != "litert" or not os.path.exists(nvidia_device):
        return None
    return Check(
        "GPU",
        WARN,
        f'{nvidia_device} is there but the model runs on the CPU: set [engine] kind = "auto" (or '
        '"torch-cuda") and model = an ONNX file (lalelu convert MODEL.tflite --to onnx)',
    )


def check_local_model(cfg: Config, frames: int, p99_limit_ms: float) -> list[Check]:
    from lalelu.engine import engine_from_config

    try:
        engine = engine_from_config(cfg.engine, warm=True)
    except LaleluError as exc:
        return [Check("model", NO_GO, str(exc))]
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    times = np.zeros(frames, np.int64)
    with engine:
        for i in range(frames):
            t0 = time.perf_counter_ns()
            engine.infer(out)
            times[i] = time.perf_counter_ns() - t0
        where = engine_device(engine)
    s = summarize_ns(times)
    gpu = unused_gpu_check(engine.name)
    return [
        Check("model", GO, f"{engine.name} loaded and warm{where}"),
        *([gpu] if gpu else []),
        Check(
            "live latency",
            GO if s["p99"] <= p99_limit_ms else NO_GO,
            f"{frames} local inferences: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms (limit {p99_limit_ms:g} ms)",
        ),
    ]


def run_checks(
    cfg: Config, role: str, frames: int = 50, p99_limit_ms: float = 50.0, min_fps_ratio: float = 0.9
) -> list[Check]:
    """`min_fps_ratio`: the share of the configured camera rate that counts as go."""
    pid, state = service_pid(role)
    checks = [
        check_cpus(cfg, role),
        check_governor(),
        check_power_and_heat(),
        check_service(role, pid, state),
    ]
    key = b""
    if role == "edge" and cfg.edge.backend:
        try:
            key = load_link_key(cfg.edge.key_file, "edge")
        except ConfigError as exc:  # the backend checks could only fail on it
            return [*checks, Check("link key", NO_GO, str(exc))]
    if role == "edge" and pid:
        checks += check_running_edge(cfg, p99_limit_ms, min_fps_ratio)  # the camera is the service's now
        if cfg.edge.backend:
            # one frame: the running edge's own latency is the live figure; this only asks "is it there"
            backend = check_backend(cfg.edge.backend, 1, p99_limit_ms, key)[0]
            if backend.verdict == NO_GO and cfg.edge.fallback:
                # the edge plays on its local model meanwhile: degraded, not silent
                backend = Check("backend", WARN, backend.detail + " (the edge plays on its local model)")
            checks.append(backend)
    elif role == "edge":
        checks.append(check_camera(cfg, min_fps_ratio=min_fps_ratio))
        if cfg.edge.backend:
            checks += check_backend(cfg.edge.backend, frames, p99_limit_ms, key)
        else:
            checks += check_local_model(cfg, frames, p99_limit_ms)
    else:
        if pid:
            checks.append(check_running_backend(cfg))
        checks += check_local_model(cfg, frames, p99_limit_ms)
    if sound_leaves_here(cfg, role):
        checks.append(check_output(cfg))
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{c.verdict:<6} {c.name:<{width}}  {c.detail}" for c in checks]
    nogo = [c.name for c in checks if c.verdict == NO_GO]
    lines.append("READY TO PLAY" if not nogo else f"NOT READY: {', '.join(nogo)}")
    return "\n".join(lines)
