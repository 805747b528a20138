#!/usr/bin/env python3
"""What a storm of monitor pages costs the instrument: `lalelu demo` with no page open, then with 200
clients that open the page (GET /, the WebSocket) again and again for the whole run, side by side.

    .venv/bin/python tools/monitor_storm.py --seconds 20 --clients 200 --out benchmarks/monitor

Each client loads the page, opens /ws, reads two messages, closes and starts over; past [monitor]
max_clients (16) the server refuses the WebSocket with 503 before any work for it. The monitor serves
from a process of its own, so what the storm can cost the edge's loop is CPU time taken from it: the
table shows the edge's overhead (capture to pose minus inference) and latency with and without it. Runs
alternate (none, storm, none, storm) so that a drift of the machine shows as a drift, not as a cost.
Writes storm.json.

`--isolated` runs it as on a Pi, where the loop has a core of its own (`isolcpus`, [edge] cpus) and the
backend is another machine: edge and backend pinned to CPU 1 (the backend one-threaded, so the camera
at 50 fps), the monitor (pinned off the edge's CPUs) and the storm's clients on CPU 0. Each run without a
storm is then measured the same way, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from demo_runs import demo_config, print_table, row, write_runs
from monitor_cost import free_port

from lalelu.cli.demo import backend_and_edge

REFUSED = {503: "refused", 429: "too_often"}  # past max_clients; past the address's request budget


async def _client(base: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            try:
                async with session.get(base + "/") as page:
                    await page.read()
                async with session.ws_connect(base + "/ws") as ws:
                    for _ in range(2):
                        await ws.receive(timeout=2)
                counts["served"] += 1
            except aiohttp.WSServerHandshakeError as exc:
                counts[REFUSED.get(exc.status, "errors")] += 1
                await asyncio.sleep(0.05)
            except (TimeoutError, aiohttp.ClientError, OSError):
                counts["errors"] += 1
                await asyncio.sleep(0.1)


def storm(
    base: str, clients: int, stop_flag: threading.Event, counts: dict[str, int], cpus: set[int] | None
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # this thread only (Linux): the clients' CPU time stays there

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_client(base, stop, counts)) for _ in range(clients)]
        while not stop_flag.is_set():
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def isolate(config: Path) -> None:
    """Edge and backend on CPU 1, one inference thread, 50 fps (what one core keeps up with)."""
    text = config.read_text().replace("cpus = [0, 1]", "cpus = [1]")
    text = text.replace("threads = 2", "threads = 1").replace("fps = 100", "fps = 50")
    config.write_text(text)


def one_run(clients: int, seconds: float, isolated: bool) -> dict:
    counts = {"served": 0, "refused": 0, "too_often": 0, "errors": 0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        config = demo_config(work / "demo.toml", port)
        if isolated:
            isolate(config)
        with backend_and_edge(config, seconds, work, quiet=True) as (_, edge, summary):
            stop_flag = threading.Event()
            thread = threading.Thread(
                target=storm,
                args=(f"http://127.0.0.1:{port}", clients, stop_flag, counts, {0} if isolated else None),
            )
            if clients:
                time.sleep(1.0)  # the page starts with the edge
                thread.start()
            while edge.poll() is None:
                time.sleep(0.2)
            stop_flag.set()
            if clients:
                thread.join(30)
            result = json.loads(summary.read_text())
    return row("clients", clients, result, isolated=isolated, **counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--isolated", action="store_true", help="also the Pi's layout: the loop on a CPU of its own"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/monitor"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for _ in range(args.rounds):
        for isolated in (False, True) if args.isolated else (False,):
            for clients in (0, args.clients):
                runs.append(one_run(clients, args.seconds, isolated))
                print(json.dumps(runs[-1]), flush=True)
    for isolated in sorted({r["isolated"] for r in runs}):
        print("\nthe loop on a CPU of its own (CPU 1), the storm on CPU 0:" if isolated else "\nshared CPUs:")
        print_table([r for r in runs if r["isolated"] == isolated], "clients")
    for r in runs:
        print(
            f"  {r['clients']:>4} clients{' (isolated)' if r['isolated'] else ''}: {r['served']} pages "
            f"served, {r['too_often']} requests refused with 429, {r['refused']} WebSockets with 503, "
            f"{r['errors']} errors"
        )
    write_runs(args.out / "storm.json", args.seconds, runs)


if __name__ == "__main__":
    main()
