"""The running edge's state as structured data: a small JSON file rewritten atomically at every summary
(on tmpfs under systemd: /run/lalelu) and the same in one line of sd_notify `STATUS=` for
`systemctl status`. `lalelu check` reads the file; nothing parses log lines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATE_NAME = "edge-state.json"
SERVICE_STATE = Path("/run/lalelu") / STATE_NAME  # RuntimeDirectory=lalelu of the lalelu-edge unit
BACKEND_STATE_NAME = "backend-state.json"  # the backend's: the edges it serves and how it batches them
SERVICE_BACKEND_STATE = Path("/run/lalelu") / BACKEND_STATE_NAME


def state_path(configured: str, name: str = STATE_NAME) -> Path | None:
    if configured:
        return Path(configured)
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) / name if runtime else None


def write_whole(path: Path, text: str) -> None:
    """Written beside it, then renamed over it: a reader never sees half of it (or an empty file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def write_state(path: Path, state: dict) -> None:
    write_whole(path, json.dumps(dict(state, time=time.time())))


def read_state(path: Path = SERVICE_STATE) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def band_line(state: dict) -> str:
    """The backend's state in one line: its edges and frames per engine call."""
    edges = ", ".join(f"{e['peer']} {e['fps']:.0f} fps" for e in state["edges"]) or "no edge sending"
    return (
        f"{len(state['edges'])} edge(s): {edges}; frames per engine call mean {state['mean_batch']:.2f}, "
        f"up to {state['max_batch_seen']} (of {state['max_batch']}); served p50 {state['served_p50_ms']:.2f} / "
        f"p99 {state['served_p99_ms']:.2f} ms"
    )


def status_line(state: dict) -> str:
    return (
        f"{state['mode']}: {state['fps']:.1f} fps, latency p50 {state['latency_p50_ms']:.1f} / "
        f"p99 {state['latency_p99_ms']:.1f} ms, {state['hits']} hits"
    )
