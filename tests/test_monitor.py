"""The monitor page: the feed between the loop and the monitor's process, the shared drawing rules, and the
page itself in a real browser (Debian's chromium driven by Playwright) against a running backend + edge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import free_port, wait_until

from lalelu.camera.still import StillSource
from lalelu.cli.demo import DEMO_CONFIG, backend_and_edge
from lalelu.config import MonitorConfig, load_config
from lalelu.drawing import FOUND, NOT_FOUND, draw_pose, page_description
from lalelu.edge.modes import EdgeMode
from lalelu.edge.monitor.feed import (
    H_FRAME_SLOT,
    H_GIVEN,
    H_HITS,
    H_POSES,
    H_TICK_NS,
    H_WANT,
    MonitorFeed,
)
from lalelu.edge.monitor.settings import MonitorSettings
from lalelu.engine import engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.errors import ConfigError
from lalelu.frames import PixelFormat
from lalelu.gestures.consumer import resolve_mapping
from lalelu.gestures.mapping import load_mapping

CHROMIUM = shutil.which("chromium")


def test_feed_hands_over_poses_hits_and_pictures_only_when_asked():
    feed = MonitorFeed.create(32, 24, PixelFormat.RGB888)
    reader = MonitorFeed.attach(feed.path)
    try:
        frame = np.full((24, 32, 3), 7, np.uint8)
        feed.offer_frame(frame, 1, EdgeMode.REMOTE)
        assert reader.header[H_GIVEN] == 0 and not reader.frames[0].any()  # nobody asked: no copy
        reader.header[H_WANT] = 1
        feed.offer_frame(frame, 2, EdgeMode.REMOTE)
        assert reader.header[H_GIVEN] == 1
        assert (reader.frames[int(reader.header[H_FRAME_SLOT])] == 7).all()
        kp = np.arange(51, dtype=np.float32).reshape(17, 3)
        for seq in range(300):  # more than the ring holds: the oldest are overwritten, never blocked on
            feed.put_pose(seq, seq * 10, 5_000_000, kp)
        feed.put_hit(38, 100, "snare")
        assert reader.header[H_POSES] == 300 and reader.header[H_HITS] == 1
        last = reader.poses[299 % len(reader.poses)]
        assert last["seq"] == 299 and np.array_equal(last["keypoints"], kp)
        assert reader.hits[0]["name"] == b"snare" and reader.hits[0]["note"] == 38
    finally:
        feed.close()
    assert not feed.path.exists()


def test_page_states_camera_lost_and_backend_reconnecting():
    from lalelu.edge.monitor.server import MonitorServer

    feed = MonitorFeed.create(32, 24, PixelFormat.RGB888)
    try:
        settings = MonitorSettings(MonitorConfig(max_clients=4, video_fps=10, jpeg_quality=70))
        server = MonitorServer(MonitorFeed.attach(feed.path), settings)
        frame = np.zeros((24, 32, 3), np.uint8)
        feed.offer_frame(frame, 0, EdgeMode.REMOTE)  # the loop took a frame just now
        assert server._stats()["camera"] == "ok" and server._stats()["mode"] == "remote"
        feed.offer_frame(frame, 1, EdgeMode.RECONNECTING)  # the backend went away ...
        feed.header[H_TICK_NS] -= 2_000_000_000  # ... and no frame came for two seconds
        stats = server._stats()
        assert stats["camera"] == "lost" and stats["mode"] == "reconnecting"
    finally:
        feed.close()


def test_request_budget_refills_and_forgets_quiet_addresses():
    from lalelu.edge.monitor.server import TRACKED_ADDRESSES, RequestBudget

    budget = RequestBudget(rate=10.0)  # a burst of 20
    assert [budget.take("a", 0.0) for _ in range(21)].count(True) == 20
    assert not budget.take("a", 0.05)  # half a request refilled: still no
    assert budget.take("a", 0.15) and not budget.take("a", 0.15)  # one more after 0.1 s
    assert budget.take("b", 0.15)  # another address has its own
    n = 0
    while n < 2 * TRACKED_ADDRESSES or len(budget) < TRACKED_ADDRESSES:  # a flood of distinct addresses
        budget.take(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 1.0)
        assert len(budget) <= TRACKED_ADDRESSES  # cannot grow it without bound
        n += 1
    budget.take("late", 100.0)  # long after, full: every quiet address is forgotten
    assert len(budget) == 1


def test_an_address_that_asks_too_often_is_refused_before_any_work_and_others_still_load():
    """A reloading storm from one address gets 429 (with Retry-After) past its budget, the allowed
    requests and another address's page load as usual."""
    from aiohttp import web

    from lalelu.edge.monitor.server import MonitorServer

    feed = MonitorFeed.create(32, 24, PixelFormat.RGB888)
    port = free_port()

    def get(source: str) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head = reply.split(b"\r\n\r\n")[0].decode()
        return int(head.split()[1]), head

    async def main() -> tuple[list[int], int, str, int]:
        server = MonitorServer(
            MonitorFeed.attach(feed.path),
            MonitorSettings(MonitorConfig(max_clients=4, max_requests_per_s=10.0)),
        )
        runner = web.AppRunner(server.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            loop = asyncio.get_running_loop()
            storm = [await loop.run_in_executor(None, get, "127.0.0.1") for _ in range(40)]
            other, _ = await loop.run_in_executor(None, get, "127.0.0.2")
            refused_head = next((head for code, head in storm if code == 429), "")
            return [code for code, _ in storm], other, refused_head, server.too_often
        finally:
            await runner.cleanup()

    try:
        storm, other, refused_head, too_often = asyncio.run(main())
    finally:
        feed.close()
    # 20 at once (two seconds' worth), then about one per 0.1 s of the storm's own duration
    assert storm[:20] == [200] * 20 and 429 in storm, storm
    assert set(storm) == {200, 429} and too_often == storm.count(429)
    assert other == 200  # the phone next to it is not the one reloading
    assert "Retry-After: 1" in refused_head


def test_unfound_keypoints_are_not_drawn_as_found():
    mapping = load_mapping(resolve_mapping("demo-nod"))
    rgb = np.zeros((240, 320, 3), np.uint8)
    kp = np.zeros((17, 3), np.float32)
    kp[:, 2] = 0.9
    kp[:, 0], kp[:, 1] = 40 + np.arange(17) * 15, 100
    kp[9] = (300, 238, 0.12)  # a wrist the model did not find, guessed at the bottom edge
    bgr = draw_pose(rgb, kp, mapping)
    found_bgr = np.array(FOUND[::-1])
    assert np.array_equal(bgr[100, 40], found_bgr)  # a found keypoint: a filled dot
    assert not np.array_equal(bgr[238, 300], found_bgr)  # the centre of the unfound one stays empty
    ring = bgr[230:240, 292:309].reshape(-1, 3)
    assert (ring == np.array(NOT_FOUND[::-1])).all(axis=1).any()  # drawn hollow and grey instead
    desc = page_description(mapping, 320, 240)
    assert desc["min_score"] == mapping.min_score and desc["used"] == [0]  # the page draws by the same rule


def test_monitor_open_to_the_lan_needs_an_allow_list_or_a_token(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[monitor]\nlisten_host = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"opens the monitor to the network: set \[monitor\] allow"):
        load_config(cfg)
    cfg.write_text('[monitor]\nlisten_host = "0.0.0.0"\nallow = ["phone"]\n')
    with pytest.raises(ConfigError, match="'phone' is not an IP address"):
        load_config(cfg)
    cfg.write_text('[monitor]\nlisten_host = "0.0.0.0"\ntoken = "s3cret"\n')
    assert load_config(cfg).monitor.token == "s3cret"


def nose_trajectory(cfg) -> tuple[float, float, StillSource]:
    """The nose of frame 0 found by the model; the still source moves it by its known offset."""
    src = StillSource(cfg.camera)
    kp = np.zeros((17, 3), np.float32)
    PoseEstimator(engine_from_config(cfg.engine)).estimate(
        src.render(0), src.pixel_format, src.width, src.height, kp
    )
    return float(kp[0, 0]), float(kp[0, 1]), src


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening (yet)
        return 0


async def flood(url: str, n: int) -> list[int]:
    """`n` WebSocket pages at once that never read: the status each got (101 = open)."""
    import aiohttp

    statuses = []
    async with aiohttp.ClientSession() as session:
        sockets = []
        for _ in range(n):
            try:
                sockets.append(await session.ws_connect(url, autoping=False))
                statuses.append(101)
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
        await asyncio.sleep(3)  # they sit there, unread, while the real page plays on
        for ws in sockets:
            await ws.close()
    return statuses


@pytest.mark.process
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tools/test installs it)")
def test_page_in_a_browser_follows_the_instrument(tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    config = tmp_path / "demo.toml"
    # 30 requests a second per address (a burst of 60): the browser's own requests and the WebSocket
    # flood below share 127.0.0.1, and the flood must reach max_clients before the budget ends
    config.write_text(
        DEMO_CONFIG.read_text().replace(
            "port = 8700", f'port = {port}\ntoken = "t0k"\nmax_requests_per_s = 30'
        )
    )
    cfg = load_config(config)
    assert cfg.monitor.port == port and cfg.monitor.token == "t0k"
    x0, y0, still = nose_trajectory(cfg)
    url = f"http://127.0.0.1:{port}/?token=t0k"
    with backend_and_edge(config, 60, tmp_path, quiet=True) as (backend, edge, _):
        wait_until("the monitor page answering", lambda: http_status(url) == 200, 30, 0.2, alive=edge)
        assert http_status(f"http://127.0.0.1:{port}/") == 401  # no token, no page
        assert http_status(f"http://127.0.0.1:{port}/static/monitor.js") == 401  # nor its files
        assert http_status(f"http://127.0.0.1:{port}/?token=t0K") == 401
        with socket.create_connection(("127.0.0.1", port)) as raw:  # a malformed request
            raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            assert b" 400 Bad Request" in raw.recv(100).split(b"\r\n")[0]
        with socket.create_connection(("127.0.0.1", port)) as raw:  # a 100-KB header
            raw.sendall(b"GET /?token=t0k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
            assert raw.recv(100).split(b"\r\n")[0].split(b" ")[1] in (b"400", b"431")
        # The token is in no process's argv (`ps`), and the monitor's journal line does not carry it.
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                assert b"t0k" not in cmdline.read_bytes(), cmdline
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
            page.goto(url)
            page.wait_for_function("monitor.pictures >= 3 && monitor.poses >= 50", timeout=30_000)
            # The first load set a session cookie (the page's WebSocket rides on it) and the token
            # left the address bar.
            assert "token" not in page.url, page.url
            cookie = {c["name"]: c for c in page.context.cookies()}["lalelu_monitor"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "t0k" not in cookie["value"]

            def state() -> dict:
                return page.evaluate(
                    "({pictures: monitor.pictures, poses: monitor.poses, hits: monitor.hits, "
                    "chart: monitor.chart.length, nose: monitor.drawnNose, state: monitor.state, "
                    "flash: document.getElementById('flash').textContent})"
                )

            first = state()
            page.wait_for_function("monitor.hits >= 1", timeout=15_000)  # a nod of the photo
            assert "nod" in state()["flash"] and "note 36" in state()["flash"]
            errors = []
            for _ in range(10):
                nose = state()["nose"]
                if nose is not None:
                    x, y, seq = nose
                    ey = y0 + still.offset_y(seq) - still.offset_y(0)
                    errors.append(max(abs(x - x0), abs(y - ey)))
                time.sleep(0.15)
            print(
                f"drawn nose vs the photo's trajectory: median {np.median(errors):.2f}, max {max(errors):.2f} px "
                f"over {len(errors)} poses"
            )
            # A few pixels of 320x240: the int8 model's own jitter as the photo moves (~1-4 px).
            assert len(errors) >= 5 and np.median(errors) <= 3.0 and max(errors) <= 6.0
            later = state()
            assert later["pictures"] > first["pictures"] and later["chart"] > first["chart"]
            assert page.locator("#framing .ok").count() == 1  # the nose, the mapping's one keypoint
            assert page.locator("#state").text_content() == "backend"

            ws_url = f"ws://127.0.0.1:{port}/ws?token=t0k"
            before = state()["pictures"]
            # A page that opens its WebSocket and then never reads a byte.
            mute = socket.create_connection(("127.0.0.1", port))
            mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            mute.sendall(
                b"GET /ws?token=t0k HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert mute.recv(12) == b"HTTP/1.1 101"  # it is in; from here on it reads nothing
            with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
                statuses = pool.submit(asyncio.run, flood(ws_url, 100)).result(timeout=60)
            assert (
                statuses.count(101) == cfg.monitor.max_clients - 2
            )  # the browser and the mute page hold two
            # past max_clients 503; past the address's request budget (the flood comes from one) 429
            assert {503, 429} <= set(statuses) <= {101, 503, 429}, statuses
            assert state()["pictures"] > before  # the page kept its pictures while 101 sat unread
            mute.close()

            page.screenshot(path=str(tmp_path / "monitor.png"))
            backend.terminate()  # the backend goes away mid-show: the edge plays on locally
            page.wait_for_function("monitor.state.startsWith('backend lost')", timeout=20_000)
            assert page.locator("#banner").is_hidden()  # playing on: a state, not a blackout
            browser.close()
    log = (tmp_path / "edge.log").read_text()
    assert "Traceback" not in log and "t0k" not in log, log
    assert "refused a malformed request" in log, log
    shot = cv2.imread(str(tmp_path / "monitor.png"))
    assert shot is not None and shot.shape[1] == 390


def test_the_monitor_s_settings_cross_the_process_boundary_typed():
    settings = MonitorSettings(
        MonitorConfig(listen_host="0.0.0.0", port=8711, allow=["192.0.2.7"], token="t0k", max_clients=3),
        (2, 3),
        {"keypoints": ["nose"], "zones": []},
    )
    assert MonitorSettings.from_json(settings.to_json()) == settings
    newer = json.loads(settings.to_json())
    newer["monitor"]["not_a_setting"] = 1  # an edge of another version: refused, not silently dropped
    with pytest.raises(TypeError, match="not_a_setting"):
        MonitorSettings.from_json(json.dumps(newer))
