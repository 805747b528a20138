"""`lalelu demo`: a backend and an edge as two processes on this machine, the still photo at 100 fps."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import lalelu
from lalelu.config import Config, load_config, monitor_url, override
from lalelu.errors import LaleluError, RunFailed

DEMO_CONFIG = Path(lalelu.__file__).resolve().parent / "data" / "demo.toml"


def lalelu_command(*args: str) -> list[str]:
    """`lalelu ARGS` as a child process of this interpreter."""
    return [sys.executable, "-m", "lalelu", *args]


def child_failed(message: str, code: int | None) -> LaleluError:
    """A child app's exit as this command's error: bad input stays bad input (2), anything else is a
    failed run (1)."""
    return LaleluError(message) if code == 2 else RunFailed(message)


def wait_until_ready(
    backend: subprocess.Popen, ready: Path, timeout_s: float = 60, quiet: bool = False, stale_s: float = 30
) -> dict:
    """The started backend's ready file (address, CPUs), once it serves; LaleluError if it dies or stalls.
    The wait is `timeout_s`, longer for as long as the backend's start-up heartbeat (sdnotify.StartingUp)
    is fresher than `stale_s`: a cold torch.compile takes over a minute, and says what it is doing."""
    heartbeat = ready.with_name(ready.name + ".starting")
    t0 = time.monotonic()
    said = 0.0
    last_alive, phase = t0, ""
    while not ready.exists():
        if backend.poll() is not None:
            raise child_failed(
                f"the backend exited with code {backend.returncode} before it was ready", backend.returncode
            )
        now = time.monotonic()
        try:
            if time.time() - heartbeat.stat().st_mtime < stale_s:
                last_alive = now
            phase = heartbeat.read_text().strip() or phase
        except OSError:
            pass  # not yet written, or removed as loading ended: the last beat still counts for stale_s
        if now - t0 > timeout_s and now - last_alive > stale_s:
            raise LaleluError(
                f"the backend was not ready within {now - t0:.0f} s"
                + (f" and stopped saying what it does (last: {phase})" if phase else "")
            )
        if not quiet and phase and now - said >= 10 and now - t0 >= 5:
            print(f"demo: the backend is starting: {phase}", file=sys.stderr, flush=True)
            said = now
        time.sleep(0.05)
    return json.loads(ready.read_text())


@contextlib.contextmanager
def backend_and_edge(
    config: Path,
    seconds: float,
    workdir: Path,
    quiet: bool,
    edge_args: tuple[str, ...] = (),
    backend_args: tuple[str, ...] = (),
) -> Iterator[tuple[subprocess.Popen, subprocess.Popen, Path]]:
    """A backend on a free port and an edge sending to it for `seconds`: (backend, edge, edge summary file).
    Quiet: their logs go to backend.log and edge.log in `workdir` (a pipe nobody reads would fill up and
    stop a long run). The backend is stopped on the way out; the caller waits for the edge."""
    ready = workdir / "backend.json"
    summary_file = workdir / "edge.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with contextlib.ExitStack() as logs:

        def stderr(name: str):
            return logs.enter_context(open(workdir / f"{name}.log", "wb")) if quiet else None

        backend = subprocess.Popen(
            lalelu_command(
                "backend", "--config", str(config), "--port", "0", "--ready-file", str(ready), *backend_args
            ),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr("backend"),
        )
        try:
            try:
                port = wait_until_ready(backend, ready, quiet=quiet)["port"]
            except LaleluError as exc:
                raise LaleluError(f"{exc}{log_tail(workdir, 'backend')}") from None
            edge = subprocess.Popen(
                lalelu_command(
                    "edge",
                    "--config",
                    str(config),
                    "--backend",
                    f"127.0.0.1:{port}",
                    "--seconds",
                    str(seconds),
                    "--json",
                    str(summary_file),
                    *edge_args,
                ),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr("edge"),
            )
            try:
                yield backend, edge, summary_file
            finally:
                if edge.poll() is None:
                    edge.terminate()
                    edge.wait(timeout=10)
        finally:
            backend.terminate()
            try:
                backend.wait(timeout=10)
            except subprocess.TimeoutExpired:
                backend.kill()


def log_tail(workdir: Path, name: str, lines: int = 5) -> str:
    """The last lines of a quiet run's log, for an error message ('' when it was not quiet)."""
    path = workdir / f"{name}.log"
    if not path.exists():
        return ""
    return "; its log ends: " + " | ".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def progress(label: str, total_s: float, quiet: bool) -> Iterator[Callable[[float], None]]:
    """A progress bar of `total_s` seconds on stderr (tqdm), updated with the seconds done; off when quiet
    and whenever stderr is not a terminal (a log file or a pipe gets no carriage-return bars)."""
    from tqdm import tqdm

    with tqdm(
        total=round(total_s, 1), desc=label, unit="s", disable=True if quiet else None, file=sys.stderr
    ) as bar:

        def update(done_s: float) -> None:
            bar.n = round(min(done_s, total_s), 1)
            bar.refresh()

        yield update


class MonitorAnnouncer:
    """Prints `monitor: URL` once the edge's monitor page answers (it starts beside the edge's loop)."""

    def __init__(self, cfg: Config, quiet: bool, give_up_s: float = 20.0) -> None:
        m = cfg.monitor
        self.url = monitor_url(m.listen_host, m.port, m.token)
        self.pending = m.enabled and m.port != 0 and not quiet
        self.deadline = time.monotonic() + give_up_s

    def poll(self) -> None:
        if not self.pending:
            return
        try:
            with urllib.request.urlopen(self.url, timeout=0.2) as reply:
                answered = reply.status == 200
        except OSError:
            answered = False
        if answered:
            print(f"monitor: {self.url}", file=sys.stderr)
            self.pending = False
        elif time.monotonic() > self.deadline:
            print("monitor: not answering (see the edge's log)", file=sys.stderr)
            self.pending = False


def run_demo(
    seconds: float,
    config: Path | None,
    quiet: bool = False,
    fps: float | None = None,
    telemetry: Path | None = None,
    wav: Path | None = None,
    record: Path | None = None,
) -> dict:
    """`telemetry`: a folder for edge.jsonl and backend.jsonl, the per-frame rows of both. `wav`: the
    session's hits rendered by the built-in synth to this file, with their onsets timed. `record`: keep the
    pose stream there (for `lalelu replay`)."""
    config = config or DEMO_CONFIG
    cfg = load_config(config)
    with tempfile.TemporaryDirectory(prefix="lalelu-demo-") as tmp:
        edge_args: tuple[str, ...] = ("--fps", str(fps)) if fps else ()
        # Always recorded: the replay times every hit against the photo's true impacts.
        recording = record or Path(tmp) / "poses.npz"
        edge_args += ("--record", str(recording))
        backend_args: tuple[str, ...] = ()
        if telemetry is not None:
            telemetry.mkdir(parents=True, exist_ok=True)
            edge_args += ("--telemetry", str(telemetry / "edge.jsonl"))
            backend_args += ("--telemetry", str(telemetry / "backend.jsonl"))
        with backend_and_edge(config, seconds, Path(tmp), quiet, edge_args, backend_args) as (
            _,
            edge,
            summary_file,
        ):
            start = time.monotonic()
            page = MonitorAnnouncer(cfg, quiet)
            with progress("demo", seconds, quiet) as update:
                while edge.poll() is None:
                    update(time.monotonic() - start)
                    page.poll()
                    time.sleep(0.25)
            if edge.returncode != 0:
                raise child_failed(
                    f"the demo's edge exited with code {edge.returncode}{log_tail(Path(tmp), 'edge')}",
                    edge.returncode,
                )
        summary = json.loads(summary_file.read_text())
        result = {k: v for k, v in summary.items() if k != "stages_ms"}
        if fps:
            cfg = override(cfg, "camera", fps=fps)
        result.update(demo_timing(cfg, recording, wav))
        if wav is not None and not quiet:
            print(f"wav: {wav} ({result['wav']['hits']} hits, {result['wav']['seconds']} s)", file=sys.stderr)
    return result


def demo_verdict(result: dict) -> str:
    """One line a person reads after the demo's JSON: did it play what the photo did, how late."""
    problems = []
    if result.get("poses_received", 0) == 0:
        problems.append("no pose came back (see the log above)")
    timing = result.get("vs_impact", {})
    if timing.get("missed"):
        problems.append(f"{timing['missed']} nod(s) without a hit")
    if timing.get("extra"):
        problems.append(f"{timing['extra']} extra hit(s)")
    lost = result.get("frames_lost", 0)
    frames = result.get("frames_inferred", 0)
    latency = result.get("latency_ms", {})
    hits, expected = result.get("hits", 0), result.get("hits_expected")
    if expected is not None and abs(hits - expected) > 1:  # one either way: a nod cut by the start or end
        problems.append(f"{hits} hits, {expected} expected")
    parts = [
        f"{hits} hits, {expected if expected is not None else '?'} expected (one either way at the ends)"
    ]
    if "mean_ms" in timing:
        parts.append(
            f"each {timing['mean_ms']:+.1f} ms from the photo's lowest point (SD {timing['sd_ms']:.1f})"
        )
    parts.append(f"{lost} of {frames} frames lost")
    parts.append(f"capture to pose p50 {latency.get('p50', 0):.1f} ms, p99 {latency.get('p99', 0):.1f} ms")
    verdict = "played as expected" if not problems else "NOT as expected: " + "; ".join(problems)
    return f"demo: {verdict}: " + ", ".join(parts)


def demo_timing(cfg: Config, recording: Path, wav: Path | None) -> dict:
    """The recorded session replayed through its mapping (the same hits it played: the reader is
    deterministic, and the recording keeps when each pose arrived), each hit's sound against the photo's
    true impacts; with `wav`, rendered and its onsets timed too."""
    from lalelu.cli.wav import session_impacts, session_wav, sound_times_s, versus_impacts
    from lalelu.gestures.consumer import resolve_mapping
    from lalelu.gestures.mapping import load_mapping
    from lalelu.gestures.recording import load_recording, replay

    rec = load_recording(recording)
    mapping = load_mapping(resolve_mapping(cfg.output.mapping))
    hits = replay(rec, mapping, cfg.output.latency_ms)
    impacts = session_impacts(cfg, rec)
    result: dict = {}
    if impacts is not None:
        # The first impact is not played: a strike arms only once it has seen the hand at rest or
        # moving back, and the photo starts moving.
        result["hits_expected"] = max(0, int(impacts.size) - 1)
        result["vs_impact"] = versus_impacts(sound_times_s(rec, hits, cfg.output.latency_ms), impacts)
    if wav is not None:
        result["wav"] = session_wav(rec, hits, mapping, cfg, wav, impacts)
    return result
