"""Hostile input for the backend: mutated and malformed packets against a live server, with a well-behaved
edge beside them that must keep getting every answer. `python -m lalelu.cli.fuzz --packets 100000`;
`--flood` adds a greedy host (127.0.0.2) sending real frames back to back, which must get its share
([backend] max_fps_per_edge, `--max-fps-per-edge`) and BUSY for the rest while the good edge is served.

Mutations hit the fields a parser can get wrong (magic, version, pixel format, size, length), truncate,
concatenate, or send plain garbage; the free-form fields (seq, timestamp) are left alone so that a
mutated packet is almost never a valid frame (each valid one costs a real inference).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import threading
import time

import numpy as np
import psutil

from lalelu.frames import PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS
from lalelu.wire.protocol import FRAME_HEADER, REPLY_SIZE, encode_frame_header, round_trip

PARSED_FIELDS = [*range(0, 8), *range(24, 32)]  # magic, version, format, flags | width, height, length
EXTREMES = [0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def mutated_packets(rng: random.Random):
    w, h = 8, 6
    payload = bytes(w * h * 3)
    good = encode_frame_header(1, 1, PixelFormat.RGB888, w, h) + payload
    while True:
        kind = rng.randrange(6)
        pkt = bytearray(good)
        if kind == 0:  # flip bits in parsed fields
            for _ in range(rng.randint(1, 4)):
                pkt[rng.choice(PARSED_FIELDS)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # extreme width / height / length
            off = rng.choice([24, 26, 28])
            size = 4 if off == 28 else 2
            val = rng.choice(EXTREMES) & ((1 << (8 * size)) - 1)
            pkt[off : off + size] = val.to_bytes(size, "little")
        elif kind == 2:  # truncated
            pkt = pkt[: rng.randrange(len(pkt))]
        elif kind == 3:  # garbage
            pkt = bytearray(rng.randbytes(rng.randint(1, 300)))
        elif kind == 4:  # random bytes over the parsed fields
            for i in rng.sample(PARSED_FIELDS, rng.randint(1, len(PARSED_FIELDS))):
                pkt[i] = rng.randrange(256)
        else:  # unknown pixel format / odd YUV size with a matching length
            pkt[6] = rng.choice([2, 3, 9, 255])
        if bytes(pkt[: FRAME_HEADER.size]) == good[: FRAME_HEADER.size]:
            pkt[24] ^= 0x40  # never a valid frame by accident
        yield bytes(pkt)


class GoodEdge(threading.Thread):
    """Sends a real frame every `period_s` and checks each answer: in order, status OK."""

    def __init__(self, address: tuple[str, int], period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.address, self.period_s = address, period_s
        self.sent = self.answered = 0
        self.errors: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        frame = np.full((48, 64, 3), 120, np.uint8).tobytes()
        out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        with socket.create_connection(self.address, timeout=10) as sock:
            while not self.stop_flag.is_set():
                header = encode_frame_header(self.sent, 1, PixelFormat.RGB888, 64, 48)
                self.sent += 1
                try:
                    r = round_trip(sock, header, frame, out)
                except ConnectionError:
                    self.errors.append(f"backend closed the good edge's connection after {self.sent}")
                    return
                if r.seq != self.sent - 1 or int(r.status) != 0:
                    self.errors.append(f"frame {self.sent - 1}: answer seq {r.seq} status {int(r.status)}")
                self.answered += 1
                time.sleep(self.period_s)


class Flooder(threading.Thread):
    """A greedy host: real frames back to back from another loopback address, counting OK and BUSY."""

    def __init__(self, address: tuple[str, int], source: str = "127.0.0.2") -> None:
        super().__init__(daemon=True)
        self.address, self.source = address, source
        self.ok = self.busy = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        frame = np.full((48, 64, 3), 60, np.uint8).tobytes()
        out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        seq = 0
        with socket.create_connection(self.address, timeout=10, source_address=(self.source, 0)) as sock:
            while not self.stop_flag.is_set():
                try:
                    r = round_trip(sock, encode_frame_header(seq, 1, PixelFormat.RGB888, 64, 48), frame, out)
                except (ConnectionError, TimeoutError):
                    return
                seq += 1
                self.ok += int(r.status) == 0
                self.busy += int(r.status) == 4  # Status.BUSY


def fuzz(
    address: tuple[str, int], packets: int, seed: int = 0, server_pid: int | None = None, flood: bool = False
) -> dict:
    rng = random.Random(seed)
    proc = psutil.Process(server_pid or os.getpid())
    rss0 = proc.memory_info().rss
    rss_peak = rss0
    edge = GoodEdge(address)
    edge.start()
    flooder = Flooder(address) if flood else None
    if flooder is not None:
        flooder.start()
    gen = mutated_packets(rng)
    replies = closed = 0
    linger = struct.pack("ii", 1, 0)
    t0 = time.monotonic()
    # One packet per connection, then end of stream: the server parses every packet (none is eaten as the
    # payload of an earlier one or dropped with a stream the server closed) and reacts before we go on.
    for _ in range(packets):
        with socket.create_connection(address, timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)  # no TIME_WAIT pile-up
            try:
                sock.sendall(next(gen))
                sock.shutdown(socket.SHUT_WR)
                while data := sock.recv(4096):
                    replies += len(data) // REPLY_SIZE
            except OSError:  # reset or already closed by the server: its answer to an unframeable stream
                pass
            closed += 1
        if closed % 1000 == 0:
            rss_peak = max(rss_peak, proc.memory_info().rss)
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    edge.stop_flag.set()
    edge.join(10)
    flooded = {}
    if flooder is not None:
        flooder.stop_flag.set()
        flooder.join(10)
        flooded = {"flood_inferred": flooder.ok, "flood_busy": flooder.busy}
    return {
        **flooded,
        "packets": packets,
        "seconds": round(elapsed, 2),
        "connections": closed,
        "bad_frame_replies": replies,
        "good_edge_sent": edge.sent,
        "good_edge_answered": edge.answered,
        "good_edge_errors": edge.errors[:10],
        "server_rss_mb_before": round(rss0 / 2**20, 1),
        "server_rss_mb_peak": round(rss_peak / 2**20, 1),
        "server_rss_mb_after": round(proc.memory_info().rss / 2**20, 1),
    }


def main() -> int:
    import subprocess
    import tempfile
    from pathlib import Path

    from lalelu.cli.demo import lalelu_command, wait_until_ready
    from lalelu.errors import LaleluError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flood", action="store_true", help="a greedy host beside the good edge (127.0.0.2)")
    ap.add_argument(
        "--max-fps-per-edge",
        type=float,
        default=250.0,
        help="the backend's [backend] max_fps_per_edge (%(default)s)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        summary_file = Path(tmp) / "backend-summary.json"
        config = Path(tmp) / "backend.toml"
        config.write_text(f"[backend]\nmax_fps_per_edge = {args.max_fps_per_edge!r}\n")
        log = open(Path(tmp) / "backend.log", "w+")  # noqa: SIM115
        # the real backend in its own process (its own GIL, its own memory to watch)
        backend = subprocess.Popen(
            lalelu_command(
                "backend",
                "--config",
                str(config),
                "--port",
                "0",
                "--threads",
                "1",
                "--no-fifo",
                "--ready-file",
                str(ready),
                "--json",
                str(summary_file),
            ),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            try:
                info = wait_until_ready(backend, ready)
            except LaleluError as exc:
                print(json.dumps({"error": str(exc)}))
                return 2
            result = fuzz(
                (info.get("host", "127.0.0.1"), info["port"]),
                args.packets,
                args.seed,
                backend.pid,
                args.flood,
            )
            result["backend_alive"] = backend.poll() is None
        finally:
            backend.terminate()
            backend.wait(10)
        if summary_file.exists():  # what the server itself counted: bad packets, rejected frames, connections
            result["server"] = json.loads(summary_file.read_text())["counters"]
        log.close()
    print(json.dumps(result))
    ok = result["backend_alive"] and not result["good_edge_errors"] and result["good_edge_answered"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
