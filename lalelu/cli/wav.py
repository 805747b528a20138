"""The timing of a recorded session's hits against the true impacts of the still photo's motion, from the
times the live output sounded them and, with `--wav`, from the onsets of their rendering by the built-in
synth. Used by `lalelu demo`, `lalelu replay` and tools/bench_strokes.py."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from lalelu.config import Config
from lalelu.gestures.mapping import Mapping
from lalelu.gestures.reader import Hit
from lalelu.gestures.recording import sound_ns
from lalelu.output import OutputError
from lalelu.output.render import TimedHit, render_hits
from lalelu.output.synth import find_soundfont

WARM_UP_STROKES = 2  # the reader learns the player's impact plane from the first strokes
AHEAD_MS = 5.0  # an attack reaches its peak within this
LSB10 = 10 / 32768  # digital silence with dither-sized noise stays below this


def clock_zero_ns(rec: dict[str, np.ndarray]) -> int:
    """The frame clock's zero: when frame 0 was (or would have been) captured."""
    seq, t = rec["seq"], rec["t_ns"]
    if len(seq) < 2 or seq[-1] == seq[0]:
        return int(t[0]) if len(t) else 0
    period_ns = (int(t[-1]) - int(t[0])) / (int(seq[-1]) - int(seq[0]))
    return round(int(t[0]) - int(seq[0]) * period_ns)


def session_impacts(cfg: Config, rec: dict[str, np.ndarray]) -> np.ndarray | None:
    """The true impact times (s on the frame clock) of a session filmed from the still source, else None."""
    if cfg.camera.source != "still" or not len(rec["seq"]):
        return None
    from lalelu.camera.motion import motion_from_config

    return motion_from_config(cfg.camera).impacts((int(rec["seq"][-1]) + 1) / cfg.camera.fps)


def versus_impacts(onsets_s: np.ndarray, impacts_s: np.ndarray, skip: int = WARM_UP_STROKES) -> dict:
    """Each onset against the nearest impact: mean, SD, p99 |error| (ms), and the impacts that got no
    onset (missed) or more than one (extra). The first `skip` impacts, while the reader learns, and the
    last (the session may end before its onset) are counted apart."""
    impacts_s = np.asarray(impacts_s, np.float64)
    onsets_s = np.asarray(onsets_s, np.float64)
    if impacts_s.size <= skip + 1:
        return {"impacts": int(impacts_s.size), "note": "too few impacts to time"}
    counted = impacts_s[skip:-1]
    if onsets_s.size == 0:
        return {"impacts": int(counted.size), "onsets": 0, "missed": int(counted.size), "extra": 0}
    nearest = np.abs(onsets_s[:, None] - impacts_s[None, :]).argmin(axis=1)
    mine = (nearest >= skip) & (nearest < impacts_s.size - 1)
    errors = (onsets_s[mine] - impacts_s[nearest[mine]]) * 1e3
    per = np.bincount(nearest[mine] - skip, minlength=counted.size)
    report: dict = {
        "impacts": int(counted.size),
        "onsets": int(mine.sum()),
        "missed": int((per == 0).sum()),
        "extra": int(np.clip(per - 1, 0, None).sum()),
        "warm_up_impacts": skip,
    }
    if errors.size:
        report.update(
            mean_ms=round(float(errors.mean()), 2),
            sd_ms=round(float(errors.std()), 2),
            p99_abs_ms=round(float(np.percentile(np.abs(errors), 99)), 2),
            min_ms=round(float(errors.min()), 2),
            max_ms=round(float(errors.max()), 2),
        )
    return report


def sound_times_s(rec: dict[str, np.ndarray], hits: list[Hit], latency_ms: float) -> np.ndarray:
    """When the live output sounded each hit, in s on the frame clock."""
    zero = clock_zero_ns(rec)
    return np.array([(sound_ns(h, latency_ms) - zero) / 1e9 for h in hits], np.float64)


def session_wav(
    rec: dict[str, np.ndarray],
    hits: list[Hit],
    mapping: Mapping,
    cfg: Config,
    path: Path,
    impacts_s: np.ndarray | None = None,
) -> dict:
    """Render the hits where the live output sounded them (impact + [output] latency_ms, or when they
    fired if later) with [output]'s synth settings, read the WAV back and time its onsets: against the
    hits (the rendering's own error) and against the true impacts where they are known."""
    hit_s = sound_times_s(rec, hits, cfg.output.latency_ms)
    out = cfg.output
    report = render_hits(
        [TimedHit(float(t), mapping.channel, h.note, h.velocity) for t, h in zip(hit_s, hits, strict=True)],
        path,
        find_soundfont(out.synth_soundfont),
        mapping.note_length_ms,
        out.synth_sample_rate,
        out.synth_gain,
    )
    samples, rate = read_wav(path)
    onsets = detect_onsets(samples, rate)
    timing: dict = {"onsets": int(onsets.size), "hits": len(hits)}
    if onsets.size == hit_s.size and onsets.size:
        timing["render_error_ms"] = {"max_abs": round(float(np.abs(onsets - hit_s).max() * 1e3), 3)}
    if impacts_s is not None and onsets.size:
        timing["vs_impact"] = versus_impacts(onsets, impacts_s)
    report["timing"] = timing
    return report


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(mono float samples in -1..1, sample rate) of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise OutputError(f"{path}: only 16-bit PCM WAVs are read here")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return data.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0, rate


def detect_onsets(
    samples: np.ndarray,
    sample_rate: int,
    floor: float = 0.003,
    rise: float = 4.0,
    before_ms: float = 20.0,
    refractory_ms: float = 30.0,
) -> np.ndarray:
    """Onset times (s) of percussive sounds in mono `samples` (-1..1).

    On 0.5-ms blocks: an onset is the first block of an attack whose next 5 ms peak above `floor`
    (-50 dBFS) and `rise` times the loudest of the `before_ms` that end 1 ms before it (a new hit over
    the previous one's tail); then, from 1 ms before that block, the first sample above that background
    (or 10 LSB) is the onset's sample.
    """
    hop = max(1, sample_rate // 2000)
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0)
    env = np.abs(samples[: n * hop]).reshape(n, hop).max(axis=1)
    w = max(1, round(before_ms / 1000 * sample_rate / hop))
    # The background ends a millisecond before the block: an attack's first blocks are not its own floor.
    gap = 2
    padded = np.concatenate([np.zeros(w + gap, env.dtype), env])
    background = np.lib.stride_tricks.sliding_window_view(padded[: -1 - gap], w).max(axis=1)
    a = max(1, round(AHEAD_MS / 1000 * sample_rate / hop))
    ahead = np.lib.stride_tricks.sliding_window_view(
        np.concatenate([env, np.zeros(a - 1, env.dtype)]), a
    ).max(axis=1)
    candidates = np.flatnonzero(
        (ahead > floor) & (ahead > rise * background) & (env > np.maximum(1.5 * background, LSB10))
    )
    refractory = refractory_ms / 1000 * sample_rate
    onsets: list[int] = []
    for block in candidates:
        lo = max(0, (int(block) - gap) * hop)
        if onsets and lo - onsets[-1] < refractory:
            continue
        segment = np.abs(samples[lo : (int(block) + 1) * hop])
        above = np.flatnonzero(segment > max(1.5 * background[block], LSB10))
        onsets.append(lo + int(above[0]))
    return np.asarray(onsets, np.float64) / sample_rate
