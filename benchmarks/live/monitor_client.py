#!/usr/bin/env python3
"""A monitor page without a browser: reads the edge's WebSocket (pictures, poses, stats) for SECONDS, as a
page would, and prints what it got. For measuring the edge's own cost of serving a page on a machine
without chromium (the GPU machine): `monitor_client.py URL SECONDS`."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def main(url: str, seconds: float) -> None:
    got = {"pictures": 0, "poses": 0, "hits": 0, "stats": 0}
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                ws = await session.ws_connect(url)
                break
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = await ws.receive(timeout=max(0.1, end - time.monotonic()))
            except TimeoutError:
                break
            if msg.type == aiohttp.WSMsgType.BINARY:
                got["pictures"] += 1
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["t"] == "poses":
                    got["poses"] += len(data["poses"])
                elif data["t"] in ("hits", "stats"):
                    got[data["t"]] += 1
            else:
                break
        await ws.close()
    print(json.dumps({"client": got}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
