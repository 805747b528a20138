"""Who may connect to the backend and how much each may send, so that strangers and a flooding edge cannot
keep the inventory's edges out: the allow-list; at most MAX_PER_ADDRESS connections a host (a new one
replaces one of that host's that sends no frames: an edge reconnecting after a crash is admitted at once,
one that plays is never replaced); MAX_CONNECTIONS in all (a silent one makes room); MAX_PENDING_KEY
unproven key exchanges (strangers queue among themselves); each host's frame budget (`max_fps_per_edge`);
and the sweep that closes stalled and idle connections. It decides; the server drops (`drop`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lalelu.clock import now_ns

if TYPE_CHECKING:
    from lalelu.backend.server import Connection, Counters

MAX_CONNECTIONS = 32  # an edge holds one; more means a client that leaks them
MAX_PER_ADDRESS = 4  # an edge holds one, and one more while it reconnects
MAX_PENDING_KEY = 8  # key exchanges not yet proven: a real edge's takes a round trip, a stranger's 5 s
STALL_S = 5.0  # a frame begun and not finished for this long is from a dead or hostile client
IDLE_S = 10.0  # an edge sends frames many times a second; a connection silent this long is dead
ROOM_AFTER_S = 1.0  # when full, a connection silent this long gives its place to a new one


class Admission:
    def __init__(
        self,
        connections: dict[socket.socket, Connection],
        allow: tuple[str, ...],
        keyed: bool,
        max_fps_per_edge: float,
        counters: Counters,
        drop: Callable[[Connection, str], None],
    ) -> None:
        self._connections, self.allow, self.keyed = connections, set(allow), keyed
        self.counters, self._drop = counters, drop
        # Each host's token bucket: max_fps_per_edge frames a second, bursts of 0.1 s (a camera's jitter)
        self.max_fps_per_edge = max_fps_per_edge
        self.burst = max(4.0, max_fps_per_edge / 10)
        self._budgets: dict[str, list[float]] = {}  # host -> [tokens, refilled at (s)]

    def refusal(self, host: str, peer: str) -> str | None:
        """None when a new connection from `host` may come in (places made for it where they could be);
        else why not, for the log."""
        if self.allow and host not in self.allow:
            return f"refused {peer}: not in [backend] allow"
        # the host's own limit first: a newcomer refused for it must not cost another host its place
        if not self._admit_from(host):
            return f"refused {peer}: {MAX_PER_ADDRESS} connections from {host} already, all of them sending frames"
        if len(self._connections) >= MAX_CONNECTIONS and not self.make_room(f"{MAX_CONNECTIONS} open"):
            return f"refused {peer}: {MAX_CONNECTIONS} connections open already, all of them active"
        return None

    def make_room(self, why: str) -> bool:
        """Close the connection silent the longest, if silent for ROOM_AFTER_S: an edge that plays is never
        silent that long, so idle clients cannot keep a real one out."""
        if not self._connections:
            return False
        quietest = min(self._connections.values(), key=lambda c: c.reader.last_byte_ns)
        if quietest.reader.last_byte_ns > now_ns() - ROOM_AFTER_S * 1e9:
            return False
        self.counters.dropped_clients += 1
        self._drop(quietest, f"silent, and its place was needed ({why})")
        return True

    def _admit_from(self, host: str) -> bool:
        """Make the places a new connection from `host` needs, or say there is none: when the host holds
        MAX_PER_ADDRESS, the oldest of its connections that has sent no frame for IDLE_S goes; the oldest
        unproven key exchange goes when MAX_PENDING_KEY are running."""
        own = [c for c in self._connections.values() if c.host == host]
        if len(own) >= MAX_PER_ADDRESS:
            # playing: a frame within IDLE_S (an emulated or loaded edge sends one every few seconds; the
            # sweep closes a connection silent that long anyway)
            quiet_since = now_ns() - IDLE_S * 1e9
            idle = [c for c in own if c.last_frame_ns < quiet_since]
            if not idle:
                return False
            self.counters.dropped_clients += 1
            self._drop(min(idle, key=lambda c: c.connected_ns), f"replaced: {host} opened another connection")
        if self.keyed:
            pending = [c for c in self._connections.values() if c.proving is not None]
            if len(pending) >= MAX_PENDING_KEY:
                # the oldest of the host with the most unfinished exchanges: a flood of strangers pushes out
                # its own, not the one exchange of an edge that is proving its key right now
                per_host: dict[str, int] = {}
                for c in pending:
                    per_host[c.host] = per_host.get(c.host, 0) + 1
                busiest = max(per_host, key=per_host.__getitem__)
                self.counters.dropped_clients += 1
                self._drop(
                    min((c for c in pending if c.host == busiest), key=lambda c: c.connected_ns),
                    f"key exchange unfinished while {MAX_PENDING_KEY} others waited",
                )
        return True

    def within_budget(self, host: str) -> bool:
        """Spend one of `host`'s frames; False when it has none left this instant."""
        now = time.monotonic()
        bucket = self._budgets.get(host)
        if bucket is None:
            bucket = self._budgets[host] = [self.burst, now]
            if len(self._budgets) > 4 * MAX_CONNECTIONS:  # hosts long gone: keep the table bounded
                live = {c.host for c in self._connections.values()} | {host}
                for gone in [h for h in self._budgets if h not in live]:
                    del self._budgets[gone]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.max_fps_per_edge)
        bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def sweep(self) -> None:
        """Close the connections that stalled (a key exchange or a frame begun and not finished in STALL_S)
        or went silent (IDLE_S)."""
        now = now_ns()
        for conn in list(self._connections.values()):
            if conn.proving is not None and conn.connected_ns < now - STALL_S * 1e9:
                why = f"did not complete the key exchange in {STALL_S:g} s"
            elif conn.reader.begun_ns and conn.reader.begun_ns < now - STALL_S * 1e9:
                why = f"sent part of a frame, then nothing for {STALL_S:g} s"
            elif conn.reader.last_byte_ns < now - IDLE_S * 1e9:
                why = f"sent nothing for {IDLE_S:g} s"
            else:
                continue
            self.counters.dropped_clients += 1
            self._drop(conn, why)
