"""What the real-time loops hand off: the reporter thread and the GPU clock sampler, at their boundaries."""

from __future__ import annotations

import io
import json
import os
import threading

import numpy as np
import pytest
from support import wait_until

from lalelu.engine.gpu_clock import SmClockSampler, nvml_sm_clock
from lalelu.runtime.reporter import Reporter
from lalelu.timing import BACKEND_TELEMETRY_DTYPE, warm_up_reports, write_jsonl


def test_reporter_runs_jobs_in_order_off_the_callers_thread_and_drains_on_close():
    seen: list[tuple[int, str]] = []
    with Reporter() as reporter:
        for i in range(5):
            reporter.submit(lambda i: seen.append((i, threading.current_thread().name)), i)
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert {name for _, name in seen} == {"lalelu-report"}


def test_a_failing_report_does_not_end_the_ones_after_it(caplog):
    seen = []
    with Reporter() as reporter:
        reporter.submit(lambda: 1 / 0)
        reporter.submit(seen.append, "next")
    assert seen == ["next"]
    assert "a background report failed" in caplog.text


def test_the_reporter_leaves_the_loops_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to tell the loop's from the others")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus[:1])  # the "loop" pinned to one CPU; threads started now inherit it
    try:
        got: list[set[int]] = []
        with Reporter() as reporter:
            reporter.submit(lambda: got.append(os.sched_getaffinity(0)))
    finally:
        os.sched_setaffinity(0, before)
    assert cpus[0] not in got[0]


def test_backend_rows_round_trip_through_json_lines():
    rows = np.zeros(3, BACKEND_TELEMETRY_DTYPE)
    rows["seq"] = [7, 8, 9]
    rows["device_ns"] = -1
    rows["sm_mhz"] = 1980
    out = io.StringIO()
    write_jsonl(rows, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["seq"] for d in lines] == [7, 8, 9]
    assert set(lines[0]) == set(BACKEND_TELEMETRY_DTYPE.names or ())
    assert lines[0]["device_ns"] == -1 and lines[0]["sm_mhz"] == 1980


def test_warming_the_reports_makes_their_next_run_cheap():
    warm_up_reports()  # what the apps do before READY
    import sys

    assert "numpy.ma" in sys.modules  # np.percentile's first-use import happened here, not in the loop


def test_without_a_gpu_driver_the_clock_is_not_sampled(caplog):
    pytest.importorskip("pynvml", reason="nvidia-ml-py is installed by .ci/run (extra dev)")
    caplog.set_level("INFO")
    if nvml_sm_clock() is not None:
        pytest.skip("this machine has an NVIDIA driver: the no-driver path cannot be seen here")
    sampler = SmClockSampler(period_s=0.001)
    assert sampler.mhz == 0 and sampler._thread is None
    sampler.close()
    assert "NVML unavailable" in caplog.text


class FakeNvml:
    """Stands in for nvidia-ml-py's pynvml: the calls the sampler makes, a clock that moves, and the
    driver going away (NVMLError) after `fail_after` queries."""

    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self, fail_after: int = 10**9) -> None:
        self.queries = 0
        self.fail_after = fail_after

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        assert index == 0
        return object()

    def nvmlDeviceGetClockInfo(self, handle: object, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        self.queries += 1
        if self.queries > self.fail_after:
            raise self.NVMLError("GPU is lost")
        return 345 if self.queries < 3 else 1980  # idle clock, then boosted


def test_the_sampler_follows_the_clock_and_stops_when_the_driver_goes(monkeypatch, caplog):
    import sys
    import time

    fake = FakeNvml(fail_after=20)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = SmClockSampler(period_s=0.002)
    wait_until("the first sample", lambda: sampler.mhz == 1980, 5)
    wait_until("the failing query", lambda: fake.queries > 20, 5)
    time.sleep(0.05)
    assert fake.queries == 21  # no query after the failure
    assert "NVML stopped answering (GPU is lost)" in caplog.text
    sampler.close()


def test_rate_limited_warnings_are_formatted_only_when_written(caplog):
    """A flood's held-back warnings cost a clock read each; the next one written counts them."""
    import logging

    from lalelu.logs import RateLimited

    class Counted:
        formatted = 0

        def __str__(self) -> str:
            Counted.formatted += 1
            return "peer"

    warnings, logger = RateLimited(every_s=3600), logging.getLogger("lalelu.test")
    with caplog.at_level(logging.WARNING, logger="lalelu.test"):
        warnings.warn(logger, "bad packet from %s", Counted())
        written = Counted.formatted  # however often logging's handlers format the one record
        for _ in range(999):
            warnings.warn(logger, "bad packet from %s", Counted())
        assert Counted.formatted == written  # none of the held-back ones was formatted
        warnings.last_ns -= warnings.every_ns + 1  # an hour later
        warnings.warn(logger, "bad packet from %s", Counted())
    assert caplog.messages == ["bad packet from peer", "bad packet from peer (+999 more since the last)"]
