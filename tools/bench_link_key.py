#!/usr/bin/env python3
"""What the link key costs: connecting until the first frame is answered (TCP, the key exchange, one frame)
and the per-frame round trip, without a
key and with one, side by side on one run, as a table and JSON.

    python tools/bench_link_key.py [--connections 200] [--frames 2000] [--json out.json]

A real InferenceServer on loopback with an estimator that answers at once, so the figures are the wire's
and the exchange's, not a model's. The key is checked once per connection; frames carry no MAC, so the
round trip is expected to be the same with and without it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

from lalelu.backend.server import InferenceServer
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.timing import summarize_ns
from lalelu.wire.link import connect_backend
from lalelu.wire.protocol import encode_frame_header, round_trip

KEY = b"bench-link-key-0123456789abcdef0123456789"
W, H = 320, 240


class InstantEstimator:
    pre_ns = engine_ns = post_ns = 0
    device_ns = -1

    def frame_buffer(self, fmt, width, height):
        return np.empty(FrameFormat(fmt, width, height).shape, np.uint8)

    def estimate(self, pixels, fmt, width, height, out) -> None:
        out[:] = 0.5


def measure(key: bytes, connections: int, frames: int) -> dict:
    server = InferenceServer(InstantEstimator(), "127.0.0.1", 0, 1 << 22, key=key)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.address[1]}"
    header = encode_frame_header(0, 1, PixelFormat.RGB888, W, H)
    payload = bytes(W * H * 3)
    out = np.zeros((17, 3), np.float32)
    try:
        connect = np.zeros(connections, np.int64)
        for i in range(connections):
            t0 = time.perf_counter_ns()
            sock = connect_backend(address, 5.0, key)  # TCP, then hello -> challenge, proof sent
            round_trip(sock, header, payload, out)
            connect[i] = time.perf_counter_ns() - t0  # until the first frame is answered
            sock.close()
        sock = connect_backend(address, 5.0, key)
        rtt = np.zeros(frames, np.int64)
        for i in range(frames):
            t0 = time.perf_counter_ns()
            round_trip(sock, header, payload, out)
            rtt[i] = time.perf_counter_ns() - t0
        sock.close()
    finally:
        server.stop()
        thread.join(5)
    return {"connect_ms": summarize_ns(connect), "round_trip_ms": summarize_ns(rtt[frames // 10 :])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {
        name: measure(key, args.connections, args.frames) for name, key in (("no key", b""), ("key", KEY))
    }
    print(
        f"{'link':8} {'connect to 1st reply p50':>25} {'p99':>8} {'round trip p50':>15} {'p99':>8}  "
        f"(ms, {W}x{H} RGB)"
    )
    for name, r in results.items():
        c, t = r["connect_ms"], r["round_trip_ms"]
        print(f"{name:8} {c['p50']:25.3f} {c['p99']:8.3f} {t['p50']:15.3f} {t['p99']:8.3f}")
    if args.json:
        machine = {"machine": platform.machine(), "cpus": len(__import__("os").sched_getaffinity(0))}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
