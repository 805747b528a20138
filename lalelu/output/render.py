"""A session's hits rendered offline to a WAV at their frame-clock times, sample-accurate (finding the
onsets in it again is analysis: lalelu.cli.wav).

FluidSynth applies events only at the start of its 64-frame blocks (1.3 ms at 48 kHz), so rendering the
hits as events would move each by up to a block. Instead each distinct (note, velocity) is rendered once
by the same synth, starting on a block boundary, and mixed in at the hit's exact sample. The synth is dry
(no reverb or chorus) and its voices add linearly, so the mix equals what the synth renders live, except
for the SoundFont's exclusive classes (an open hi-hat cut by a closed one) and polyphony limits.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lalelu.output import OutputError
from lalelu.output.synth import drum_synth

BLOCK = 64  # FluidSynth's internal block
TAIL_LIMIT_S = 4.0  # a one-shot that still sounds after this is cut (a crash cymbal's long release)


@dataclass(frozen=True, slots=True)
class TimedHit:
    t_s: float  # on the session's frame clock: 0 = the camera's first frame
    channel: int
    note: int
    velocity: int


class OneShots:
    """Each (channel, note, velocity) rendered once: int16 stereo frames, from note-on to silence."""

    def __init__(self, soundfont: Path, sample_rate: int, gain: float, note_length_ms: float) -> None:
        self.sample_rate = sample_rate
        self.synth = drum_synth(soundfont, sample_rate, gain)
        self.length = max(BLOCK, round(note_length_ms / 1000 * sample_rate))
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def get(self, channel: int, note: int, velocity: int) -> np.ndarray:
        key = (channel, note, velocity)
        if key not in self._cache:
            self._cache[key] = self._render(*key)
        return self._cache[key]

    def _render(self, channel: int, note: int, velocity: int) -> np.ndarray:
        synth = self.synth
        synth.noteon(channel - 1, note, velocity)
        blocks = [synth.get_samples(-(-self.length // BLOCK) * BLOCK)]
        synth.noteoff(channel - 1, note)
        limit = int(TAIL_LIMIT_S * self.sample_rate)
        done = blocks[0].size // 2
        while synth.get_active_voice_count() > 0 and done < limit:
            blocks.append(synth.get_samples(16 * BLOCK))
            done += 16 * BLOCK
        synth.all_sounds_off(channel - 1)
        synth.get_samples(BLOCK)  # the next one-shot starts from silence on a block boundary
        return np.concatenate(blocks).reshape(-1, 2)

    def close(self) -> None:
        self.synth.delete()


def render_hits(
    hits: list[TimedHit],
    path: Path,
    soundfont: Path,
    note_length_ms: float,
    sample_rate: int = 48000,
    gain: float = 1.0,
    tail_s: float = 1.0,
) -> dict:
    """Write `hits` as a 16-bit stereo WAV; return its length, peak and how many samples clipped."""
    shots = OneShots(soundfont, sample_rate, gain, note_length_ms)
    try:
        end = max((h.t_s for h in hits), default=0.0) + tail_s
        mix = np.zeros((round(end * sample_rate) + 1, 2), np.int32)
        for h in hits:
            if h.t_s < 0:
                raise OutputError(f"a hit at {h.t_s:.3f} s lies before the session's first frame")
            shot = shots.get(h.channel, h.note, h.velocity)
            start = round(h.t_s * sample_rate)
            n = min(len(shot), len(mix) - start)
            mix[start : start + n] += shot[:n]
    finally:
        shots.close()
    clipped = int(np.count_nonzero(np.abs(mix) > 32767))
    pcm = np.clip(mix, -32768, 32767).astype("<i2")
    try:
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(pcm.tobytes())
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror}): choose a writable path for --wav") from exc
    return {
        "path": str(path),
        "hits": len(hits),
        "seconds": round(len(pcm) / sample_rate, 3),
        "sample_rate": sample_rate,
        "peak": int(np.abs(pcm).max(initial=0)),
        "clipped_samples": clipped,
    }
