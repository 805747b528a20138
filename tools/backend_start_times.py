"""How long a backend takes from its start to serving, per engine configuration, cold and warm.

    python tools/backend_start_times.py --config benchmarks/live/demo-torch-cuda.toml \
        --json benchmarks/start/h200.json

Each variant is a real `lalelu backend` process started as its unit would start it, with torch.compile's
caches in a folder of its own (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR: the unit's /var/cache/lalelu):
"cold" starts with that folder empty, "warm" starts again on what the cold start left there. The time is
from the process's start to its ready file (it serves); the phases are what its start-up heartbeat said
(sdnotify.StartingUp, as systemd's STATUS= shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_once(config: Path, cache: Path, work: Path) -> dict:
    ready = work / "backend.json"
    heartbeat = ready.with_name(ready.name + ".starting")
    ready.unlink(missing_ok=True)
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=str(cache / "torchinductor"),
        TRITON_CACHE_DIR=str(cache / "triton"),
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "lalelu", "backend", "--config", str(config), "--port", "0"]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, "--ready-file", str(ready)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    phases: list[tuple[float, str]] = []
    try:
        while not ready.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise SystemExit(f"the backend exited with code {proc.returncode}:\n{err}")
            try:
                phase = heartbeat.read_text().strip().rsplit(" (", 1)[0]
            except OSError:
                phase = ""
            if phase and (not phases or phases[-1][1] != phase):
                phases.append((round(time.monotonic() - t0, 2), phase))
            time.sleep(0.02)
        ready_s = time.monotonic() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"ready_s": round(ready_s, 2), "phases": phases}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the backend's configuration (its [engine])")
    p.add_argument("--compile", default="false,true", help="compile values to try (comma-separated)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    from lalelu.config import load_config

    base = args.config.read_text()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lalelu-start-") as tmp:
        work = Path(tmp)
        for compile_ in args.compile.split(","):
            config = work / f"compile-{compile_}.toml"
            lines = [ln for ln in base.splitlines() if not ln.strip().startswith("compile")]
            at = next(i for i, ln in enumerate(lines) if ln.strip() == "[engine]") + 1
            config.write_text("\n".join([*lines[:at], f"compile = {compile_}", *lines[at:]]) + "\n")
            load_config(config)  # a bad variant is refused here, not as a backend's exit
            cache = work / f"cache-{compile_}"
            shutil.rmtree(cache, ignore_errors=True)
            for temperature in ("cold", "warm"):
                got = start_once(config, cache, work)
                rows.append({"compile": compile_ == "true", "start": temperature, **got})
                print(f"compile {compile_:<5} {temperature}: ready after {got['ready_s']:7.2f} s", flush=True)
                for at_s, phase in got["phases"]:
                    print(f"    {at_s:7.2f} s  {phase}")
    cfg = load_config(args.config)
    result = {
        "config": str(args.config),
        "engine": cfg.engine.kind,
        "model": cfg.engine.model,
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
    }
    try:
        import torch

        result["machine"]["torch"] = torch.__version__
        if torch.cuda.is_available():
            result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
