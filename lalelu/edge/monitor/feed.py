"""What the edge loop hands the monitor: a file in shared memory (/dev/shm) with rings of poses and hits,
two picture slots and a few state words, mapped by the loop's process and by the monitor's.

The loop only writes: a pose or a hit is a slot filled then a counter advanced (aligned 8-byte stores);
a picture is copied only when the monitor has asked for one (at its picture rate, not the camera's). It
never waits for the monitor, which reads at its own pace and drops what it was too slow for.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from lalelu.clock import now_ns
from lalelu.edge.modes import EdgeMode
from lalelu.frames import FrameFormat, PixelFormat
from lalelu.keypoints import NUM_KEYPOINTS

POSE_SLOTS = 256  # 2.5 s at 100 fps: the monitor reads every 50 ms
HIT_SLOTS = 64
MAGIC = 0x4C4C4D4F4E310001  # "LLMON1" + version

POSE_DTYPE = np.dtype(
    [
        ("seq", "<i8"),
        ("capture_ns", "<i8"),
        ("pose_ns", "<i8"),
        ("inference_ns", "<i8"),
        ("keypoints", "<f4", (NUM_KEYPOINTS, 3)),
    ]
)
HIT_DTYPE = np.dtype([("t_ns", "<i8"), ("note", "<i4"), ("velocity", "<i4"), ("name", "S24")])

# Header words (int64)
H_MAGIC, H_POSES, H_HITS, H_WANT, H_GIVEN, H_FRAME_SEQ, H_FRAME_SLOT, H_MODE = range(8)
H_TICK_NS, H_WIDTH, H_HEIGHT, H_FORMAT, H_PORT = range(8, 13)
HEADER_WORDS = 32
FIXED_BYTES = HEADER_WORDS * 8 + POSE_SLOTS * POSE_DTYPE.itemsize + HIT_SLOTS * HIT_DTYPE.itemsize


def remove_stale_feeds(folder: Path) -> None:
    """Feeds of edges that were killed (SIGKILL, the watchdog) stay in shared memory: remove them."""
    for path in folder.glob("lalelu-monitor-*-*"):
        try:
            os.kill(int(path.name.split("-")[2]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not ours, or another user's live edge
            continue


class MonitorFeed:
    """The shared file, as a set of numpy views. `create` on the edge, `attach` in the monitor."""

    def __init__(self, path: Path, mm: np.memmap, owner: bool) -> None:
        self.path, self._mm, self.owner = path, mm, owner
        self.header = np.ndarray((HEADER_WORDS,), "<i8", mm, 0)
        off = HEADER_WORDS * 8
        self.poses = np.ndarray((POSE_SLOTS,), POSE_DTYPE, mm, off)
        off += POSE_SLOTS * POSE_DTYPE.itemsize
        self.hits = np.ndarray((HIT_SLOTS,), HIT_DTYPE, mm, off)
        size = (len(mm) - FIXED_BYTES) // 2
        self.frames = [np.ndarray((size,), np.uint8, mm, FIXED_BYTES + i * size) for i in range(2)]

    @classmethod
    def create(cls, width: int, height: int, fmt: PixelFormat) -> MonitorFeed:
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        remove_stale_feeds(folder)
        fd, name = tempfile.mkstemp(prefix=f"lalelu-monitor-{os.getpid()}-", dir=folder)
        os.close(fd)
        path = Path(name)
        size = FIXED_BYTES + 2 * math.prod(FrameFormat(fmt, width, height).shape)
        feed = cls(path, np.memmap(path, np.uint8, "w+", shape=(size,)), owner=True)
        h = feed.header
        h[H_WIDTH], h[H_HEIGHT], h[H_FORMAT] = width, height, int(fmt)
        h[H_MODE] = EdgeMode.STARTING
        h[H_MAGIC] = MAGIC
        return feed

    @classmethod
    def attach(cls, path: Path) -> MonitorFeed:
        mm = np.memmap(path, np.uint8, "r+")
        feed = cls(path, mm, owner=False)
        if feed.header[H_MAGIC] != MAGIC:
            raise ValueError(f"{path} is not a lalelu monitor feed of this version")
        return feed

    # --- the loop's side: no allocation, no waiting -------------------------------------------------

    def put_pose(self, seq: int, capture_ns: int, inference_ns: int, keypoints: np.ndarray) -> None:
        n = int(self.header[H_POSES])
        slot = self.poses[n % POSE_SLOTS]
        slot["seq"], slot["capture_ns"], slot["pose_ns"], slot["inference_ns"] = (
            seq,
            capture_ns,
            now_ns(),
            inference_ns,
        )
        slot["keypoints"] = keypoints
        self.header[H_POSES] = n + 1

    def put_hit(self, note: int, velocity: int, name: str) -> None:
        n = int(self.header[H_HITS])
        slot = self.hits[n % HIT_SLOTS]
        slot["t_ns"], slot["note"], slot["velocity"], slot["name"] = (
            now_ns(),
            note,
            velocity,
            name.encode()[:24],
        )
        self.header[H_HITS] = n + 1

    def offer_frame(self, frame: np.ndarray, seq: int, mode: int) -> None:
        """Once per captured frame: the loop's tick and mode, a flag compare, and a copy only when the
        monitor asked for a picture."""
        h = self.header
        h[H_TICK_NS], h[H_MODE] = now_ns(), mode
        want = h[H_WANT]
        if want == h[H_GIVEN]:
            return
        slot = 1 - int(h[H_FRAME_SLOT])
        flat = frame.reshape(-1)
        if flat.size != self.frames[slot].size:
            return  # a source whose geometry differs from the feed's: no picture rather than a wrong one
        self.frames[slot][:] = flat
        h[H_FRAME_SEQ], h[H_FRAME_SLOT] = seq, slot
        h[H_GIVEN] = want

    def close(self) -> None:
        del self._mm
        if self.owner:
            self.path.unlink(missing_ok=True)
