"""`--wav` of `lalelu demo` and `lalelu replay`: a recorded session's hits rendered by the built-in synth,
and, where the input was the still photo, the onsets timed against the moments it is really lowest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lalelu.config import Config
from lalelu.gestures.mapping import Mapping
from lalelu.gestures.reader import Hit
from lalelu.output.render import TimedHit, detect_onsets, lowest_times, onset_errors, read_wav, render_hits
from lalelu.output.synth import find_soundfont


def clock_zero_ns(rec: dict[str, np.ndarray]) -> int:
    """The frame clock's zero: when frame 0 was (or would have been) captured."""
    seq, t = rec["seq"], rec["t_ns"]
    if len(seq) < 2 or seq[-1] == seq[0]:
        return int(t[0]) if len(t) else 0
    period_ns = (int(t[-1]) - int(t[0])) / (int(seq[-1]) - int(seq[0]))
    return round(int(t[0]) - int(seq[0]) * period_ns)


def session_wav(
    rec: dict[str, np.ndarray],
    hits: list[Hit],
    mapping: Mapping,
    cfg: Config,
    path: Path,
    still_period_s: float | None = None,
) -> dict:
    """Render the hits at their frame-clock times with [output]'s synth settings, read the WAV back and
    time its onsets: against the hits (the rendering's own error) and, for the still photo, against its
    lowest moments (the instrument's: detection delay minus compensation)."""
    zero = clock_zero_ns(rec)
    hit_s = np.array([(h.t_ns - zero) / 1e9 for h in hits])
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
    if still_period_s and onsets.size:
        errors = onset_errors(onsets, lowest_times(still_period_s, samples.size / rate)) * 1e3
        timing["vs_lowest_ms"] = {
            "mean": round(float(errors.mean()), 2),
            "std": round(float(errors.std()), 2),
            "min": round(float(errors.min()), 2),
            "max": round(float(errors.max()), 2),
            "per_hit": [round(float(e), 2) for e in errors],
        }
    report["timing"] = timing
    return report
