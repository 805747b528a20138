"""The monitor's own process: reads the feed the edge loop fills, serves the page and pushes poses, hits,
pictures and latency to every open page over a WebSocket (aiohttp).

It runs pinned off the loop's CPUs at a lower priority; JPEG encoding happens here, not in the loop. A page
that reads slowly gets only the latest picture (each page has a small queue; what does not fit is
dropped), one that reads nothing for `STALLED_S` is closed, and more than `max_clients` pages are refused.
An address that asks more often than `max_requests_per_s` (a reloading storm) is refused with 429 before
anything is read, checked or sent for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from lalelu.clock import now_ns
from lalelu.config import monitor_url
from lalelu.edge.modes import EdgeMode
from lalelu.edge.monitor.feed import (
    H_FORMAT,
    H_FRAME_SEQ,
    H_FRAME_SLOT,
    H_GIVEN,
    H_HEIGHT,
    H_HITS,
    H_MODE,
    H_PORT,
    H_POSES,
    H_TICK_NS,
    H_WANT,
    H_WIDTH,
    HIT_SLOTS,
    POSE_SLOTS,
    MonitorFeed,
)
from lalelu.edge.monitor.settings import MonitorSettings
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.timing import summarize_ns

log = logging.getLogger("lalelu.monitor")
STATIC = Path(__file__).resolve().parent / "static"
PUMP_S = 0.025  # how often new poses are pushed: 40 Hz, each message carries every pose since the last
STATS_S = 0.5
CAMERA_LOST_S = 1.0  # the loop has not taken a frame for this long
QUEUE = 8  # messages a page may be behind before its pictures are dropped
STALLED_S = 10.0  # a page that took nothing for this long is closed
SESSION_COOKIE = "lalelu_monitor"
BURST_S = 2.0  # an address may spend this many seconds' worth of requests at once (a page and its files)
TRACKED_ADDRESSES = 4096  # request budgets kept at most; past it, the full (quiet) ones are forgotten


class RequestBudget:
    """A token bucket per client address: `rate` requests per second, `rate * BURST_S` at once."""

    def __init__(self, rate: float) -> None:
        self.rate, self.burst = rate, rate * BURST_S
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def take(self, address: str, now: float) -> bool:
        tokens, then = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return False
        if address not in self._buckets and len(self._buckets) >= TRACKED_ADDRESSES:
            self._forget_quiet(now)
        self._buckets[address] = (tokens - 1.0, now)
        return True

    def _forget_quiet(self, now: float) -> None:
        """Drop the addresses whose bucket has refilled (they would start full anyway); if a flood of
        distinct addresses keeps none quiet, start over (each starts with its burst again)."""
        refill_s = self.burst / self.rate
        self._buckets = {a: tb for a, tb in self._buckets.items() if now - tb[1] < refill_s}
        if len(self._buckets) >= TRACKED_ADDRESSES:
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


def session_value(token: str) -> str:
    """The cookie a page gets for the token: derived from it, so the token itself is sent only once."""
    return hmac.new(token.encode(), b"lalelu monitor session", hashlib.sha256).hexdigest()


class OneLineRequestErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (garbage, a 100-KB header) with a traceback at ERROR: one
    warning line instead, naming the peer's mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record.msg, record.args = "monitor: refused a malformed request: %s", (reason[:200],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


@dataclass(eq=False)  # pages are told apart by identity: a set of them
class Page:
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    last_taken: float = field(default_factory=time.monotonic)


class MonitorServer:
    def __init__(self, feed: MonitorFeed, settings: MonitorSettings) -> None:
        self.feed, self.settings = feed, settings.monitor
        self.description = settings.page
        self.pages: set[Page] = set()
        h = feed.header
        self.fmt = PixelFormat(int(h[H_FORMAT]))
        self.shape = FrameFormat(self.fmt, int(h[H_WIDTH]), int(h[H_HEIGHT])).shape
        self._poses_seen = int(h[H_POSES])
        self._hits_seen = int(h[H_HITS])
        self._frame_seq_sent = -1
        self._allow = {ipaddress.ip_address(a) for a in self.settings.allow}
        self._token = self.settings.token
        self._session = session_value(self._token) if self._token else ""
        self._closing: set[asyncio.Future] = set()  # closes of stalled pages, kept until done
        self._budget = RequestBudget(self.settings.max_requests_per_s)
        self.too_often = 0  # requests refused by the per-address budget

    # --- HTTP ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_static("/static/", STATIC, show_index=False)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if not self._budget.take(request.remote or "", time.monotonic()):
            self.too_often += 1
            raise web.HTTPTooManyRequests(
                text="too many requests from this address ([monitor] max_requests_per_s)\n",
                headers={"Retry-After": "1"},
            )
        if self._allow:
            try:
                ok = ipaddress.ip_address(request.remote or "") in self._allow
            except ValueError:
                ok = False
            if not ok:
                raise web.HTTPForbidden(text="this address is not in [monitor] allow\n")
        if self._token and not self._authorized(request):
            raise web.HTTPUnauthorized(text="open the monitor with ?token=... ([monitor] token)\n")
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        """The token once in the address (the first load), then the session cookie it set, or the token
        as a bearer header; every comparison in constant time."""
        given = request.query.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self._token.encode()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self._session.encode()):
            return True
        bearer = request.headers.get("Authorization", "")
        return bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].encode(), self._token.encode())

    async def _index(self, request: web.Request) -> web.StreamResponse:
        reply = web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if self._token:  # the page drops ?token from its address; its requests carry the cookie
            reply.set_cookie(SESSION_COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        return reply

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self.pages) >= self.settings.max_clients:
            raise web.HTTPServiceUnavailable(text="too many monitor pages open ([monitor] max_clients)\n")
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=4096)
        await ws.prepare(request)
        page = Page(ws)
        self.pages.add(page)
        sender = asyncio.create_task(self._send(page))
        try:
            await ws.send_str(json.dumps({"t": "hello", **self.description}))
            async for msg in ws:  # the page sends nothing that matters; this notices it leaving
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.pages.discard(page)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _send(self, page: Page) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                msg = await page.queue.get()
                if isinstance(msg, bytes):
                    await page.ws.send_bytes(msg)
                else:
                    await page.ws.send_str(msg)
                page.last_taken = time.monotonic()

    def _push(self, msg: str | bytes) -> None:
        for page in list(self.pages):
            try:
                page.queue.put_nowait(msg)
            except asyncio.QueueFull:
                if time.monotonic() - page.last_taken > STALLED_S:
                    log.warning("closing a monitor page that read nothing for %.0f s", STALLED_S)
                    self.pages.discard(page)
                    closing = asyncio.ensure_future(page.ws.close())
                    self._closing.add(closing)
                    closing.add_done_callback(self._closing.discard)

    # --- the feed -------------------------------------------------------------------------------

    def _new_poses(self) -> list:
        h = self.feed.header
        end = int(h[H_POSES])
        start = max(self._poses_seen, end - POSE_SLOTS + 8)  # what the loop overwrote meanwhile is gone
        self._poses_seen = end
        out = []
        for n in range(start, end):
            p = self.feed.poses[n % POSE_SLOTS].copy()
            total_ms = (p["pose_ns"] - p["capture_ns"]) / 1e6
            infer_ms = p["inference_ns"] / 1e6
            kp = np.round(p["keypoints"], 2).tolist()
            out.append([int(p["seq"]), round(float(total_ms), 3), round(float(infer_ms), 3), kp])
        return out

    def _new_hits(self) -> list:
        end = int(self.feed.header[H_HITS])
        start = max(self._hits_seen, end - HIT_SLOTS)
        self._hits_seen = end
        return [
            {
                "name": h["name"].decode(errors="replace"),
                "note": int(h["note"]),
                "velocity": int(h["velocity"]),
            }
            for h in (self.feed.hits[n % HIT_SLOTS].copy() for n in range(start, end))
        ]

    def _stats(self) -> dict:
        h = self.feed.header
        now = now_ns()
        poses = self.feed.poses[: min(int(h[H_POSES]), POSE_SLOTS)].copy()
        last_s = poses[poses["pose_ns"] >= now - 1_000_000_000]  # the feed's ring holds the last second
        stats: dict[str, Any] = {
            "t": "stats",
            "mode": mode.word if (mode := EdgeMode.of(int(h[H_MODE]))) is not None else "?",
            "camera": "lost" if (now - int(h[H_TICK_NS])) / 1e9 > CAMERA_LOST_S else "ok",
            "fps": int(last_s.size),
            "pages": len(self.pages),
        }
        for name, ns in (
            ("total", last_s["pose_ns"] - last_s["capture_ns"]),
            ("inference", last_s["inference_ns"]),
        ):
            ms = summarize_ns(ns)
            stats[name] = {"p50": round(ms["p50"], 2), "p99": round(ms["p99"], 2)} if ns.size else None
        return stats

    def _picture(self) -> bytes | None:
        """The JPEG of the picture the loop last handed over, if new; then ask for the next one."""
        h = self.feed.header
        if h[H_GIVEN] != h[H_WANT]:
            return None  # asked, not yet given (the loop hands one over with its next frame)
        jpeg = None
        seq = int(h[H_FRAME_SEQ])
        if int(h[H_GIVEN]) > 0 and seq != self._frame_seq_sent:
            raw = self.feed.frames[int(h[H_FRAME_SLOT])].reshape(self.shape)
            to_bgr = cv2.COLOR_YUV2BGR_I420 if self.fmt == PixelFormat.YUV420 else cv2.COLOR_RGB2BGR
            bgr = cv2.cvtColor(raw, to_bgr)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
            if ok:
                jpeg = buf.tobytes()
                self._frame_seq_sent = seq
        h[H_WANT] = int(h[H_GIVEN]) + 1
        return jpeg

    async def pump(self) -> None:
        next_stats = next_picture = time.monotonic()
        picture_period = 1.0 / self.settings.video_fps
        edge = os.getppid()
        while True:
            await asyncio.sleep(PUMP_S)
            if os.getppid() != edge:  # the edge was killed without stopping us: end with it
                return
            poses, hits = self._new_poses(), self._new_hits()
            if not self.pages:
                continue
            if poses:
                self._push(json.dumps({"t": "poses", "poses": poses}))
            if hits:
                self._push(json.dumps({"t": "hits", "hits": hits}))
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_S
                self._push(json.dumps(self._stats()))
            if now >= next_picture:
                jpeg = self._picture()
                if jpeg is not None:
                    next_picture = now + picture_period
                    self._push(jpeg)


async def serve(feed: MonitorFeed, settings: MonitorSettings) -> None:
    server = MonitorServer(feed, settings)
    m = settings.monitor
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, m.listen_host, m.port, backlog=64)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.error(
            "cannot listen on %s:%s (%s): choose another [monitor] port, or stop what uses it; the "
            "instrument plays on without its monitor page",
            m.listen_host,
            m.port,
            exc.strerror,
        )
        raise SystemExit(1) from None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    feed.header[H_PORT] = port
    # Never the token itself: this line goes to the journal.
    log.info(
        "monitor: %s%s",
        monitor_url(m.listen_host, port),
        " (open it with ?token= and [monitor] token)" if m.token else "",
    )
    try:
        await server.pump()
    finally:
        await runner.cleanup()


def run_monitor(feed_path: Path, settings: MonitorSettings) -> None:
    logging.getLogger("aiohttp.server").addFilter(OneLineRequestErrors())
    avoid = set(settings.avoid_cpus)
    cpus = set(os.sched_getaffinity(0)) - avoid
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError):
        os.nice(10)
    feed = MonitorFeed.attach(feed_path)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(feed, settings))
