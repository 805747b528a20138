"""One clock for every frame timestamp: CLOCK_MONOTONIC in ns, the clock picamera2's SensorTimestamp uses."""

import time


def now_ns() -> int:
    return time.monotonic_ns()


def sleep_until_ns(deadline_ns: int) -> None:
    """Sleep most of the way, then spin the last 200 us: time.sleep alone overshoots by up to ~100 us."""
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > 300_000:
        time.sleep((remaining - 200_000) / 1e9)
    while time.monotonic_ns() < deadline_ns:
        pass
