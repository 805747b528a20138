"""The booted rig's edge configuration (tests/vm.py) played offline, on this machine, at the frame schedule
the emulated rig delivers: the still photo's 40-s nod at 4 fps, a pose every 0.5-3.5 s, each 2.4-3.5 s
late, through the real bundled model and the rig's own mapping. The VM tests wait for hits from exactly
this; here it is seen in seconds that every nod plays once, so a VM test without hits points at the rig,
not at the motion."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from vm import VM_EDGE_CONFIG, VM_MAPPING_TEXT

from lalelu.camera.still import StillSource
from lalelu.config import CameraConfig, EngineConfig
from lalelu.engine import engine_from_config
from lalelu.engine.estimator import PoseEstimator
from lalelu.gestures.mapping import load_mapping
from lalelu.gestures.reader import GestureReader, Hit


@pytest.mark.parametrize(("steps", "delay_s"), [((2, 3, 4), 2.4), ((2, 6, 10, 14), 3.5)])
def test_the_rigs_slow_nod_plays_once_per_nod_at_the_rigs_pose_rate(tmp_path, steps, delay_s):
    cam = dataclasses.replace(CameraConfig(), **VM_EDGE_CONFIG["camera"])
    src = StillSource(cam)
    (tmp_path / "slow-nod.toml").write_text(VM_MAPPING_TEXT)
    mapping = load_mapping(tmp_path / "slow-nod.toml")
    estimator = PoseEstimator(
        engine_from_config(dataclasses.replace(EngineConfig(), kind="litert", threads=1))
    )
    hits: list[Hit] = []
    reader = GestureReader(mapping, cam.width, cam.height, hits.append, lambda *_: None)
    kp = np.zeros((17, 3), np.float32)
    schedule = random.Random(7)
    seconds, seq, nose = 200.0, 0, []
    while seq < seconds * cam.fps:
        estimator.estimate(src.render(seq), src.pixel_format, cam.width, cam.height, kp)
        nose.append(kp[0].copy())
        t_ns = int(seq / cam.fps * 1e9)
        reader.update(t_ns, kp, t_ns + int(delay_s * 1e9))
        seq += schedule.choice(steps)
    nose_track = np.array(nose)
    assert nose_track[:, 2].min() >= mapping.min_score  # the nose never leaves the picture
    period = cam.still_period_s
    lowest = src.motion.impacts(seconds).tolist()  # the sine's lowest points
    times = [h.t_ns / 1e9 for h in hits]
    # one hit per nod after the first (the reader's warm-up), each near its nod's lowest point
    assert len(hits) in (len(lowest) - 1, len(lowest)), times
    for t in times:  # not at the top; a pose is 0.5-3.5 s and the bottom a plateau of seconds
        assert min(abs(t - lo) for lo in lowest) < period / 4, (t, lowest)
