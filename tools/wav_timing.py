#!/usr/bin/env python3
"""When does the drum sound, against when the photo is really lowest? One demo session, played back
through the demo's mapping with `compensate_ms` off and on, each rendered by the built-in synth to a WAV
whose onsets are detected and compared with the still source's known lowest moments.

    .venv/bin/python tools/wav_timing.py --seconds 60 --out benchmarks/sound

Prints a table, writes timing.json, off.wav/on.wav and timing.png (per-hit error, and the waveform around
one hit with the true lowest moment marked). The WAVs are on the frame clock: the sound a listener hears
live comes later by the pipeline's latency (capture to hit) and the audio buffer, which is what
compensation is meant to cancel.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from lalelu.config import load_config
from lalelu.gestures.consumer import resolve_mapping
from lalelu.gestures.mapping import load_mapping
from lalelu.gestures.recording import load_recording, replay
from lalelu.output.render import detect_onsets, lowest_times, read_wav
from lalelu_commands.demo import DEMO_CONFIG, run_demo
from lalelu_commands.wav import clock_zero_ns, session_wav


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the demo session")
    ap.add_argument("--compensate-ms", type=float, default=30.0, help="compensate_ms of the 'on' variant")
    ap.add_argument("--recording", type=Path, help="reuse this recorded demo session instead of playing one")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/sound"), help="folder for JSON, WAVs, plot")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(DEMO_CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        rec_path = args.recording or Path(tmp) / "poses.npz"
        live = None
        if args.recording is None:
            live = run_demo(args.seconds, None, quiet=True, record=rec_path)
        rec = load_recording(rec_path)
    base = load_mapping(resolve_mapping(cfg.output.mapping))
    variants = {
        "off": base,
        "on": replace(
            base, strikes=tuple(replace(s, compensate_ms=args.compensate_ms) for s in base.strikes)
        ),
    }
    period = cfg.camera.still_period_s
    results: dict = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {platform.node()}",
        "poses": len(rec["t_ns"]),
        "compensate_ms_on": args.compensate_ms,
        "live": live,
    }
    for name, mapping in variants.items():
        hits = replay(rec, mapping)
        wav = args.out / f"{name}.wav"
        results[name] = session_wav(rec, hits, mapping, cfg, wav, period)
    print(
        f"{'compensate':>10} {'hits':>5} {'onsets':>6} {'render max':>10} {'mean':>7} {'std':>6} {'min':>7} {'max':>7}"
    )
    for name in variants:
        t = results[name]["timing"]
        v = t.get("vs_lowest_ms", {})
        comp = f"{args.compensate_ms:g} ms" if name == "on" else "off"
        print(
            f"{comp:>10} {t['hits']:>5} {t['onsets']:>6} {t.get('render_error_ms', {}).get('max_abs', float('nan')):>8} ms"
            f" {v.get('mean', float('nan')):>7} {v.get('std', float('nan')):>6} {v.get('min', float('nan')):>7}"
            f" {v.get('max', float('nan')):>7}  (ms after the lowest moment)"
        )
    (args.out / "timing.json").write_text(json.dumps(results, indent=1))
    plot(args.out, rec, variants, period)


def plot(out: Path, rec: dict, variants: dict, period: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7))
    for name in variants:
        samples, rate = read_wav(out / f"{name}.wav")
        onsets = detect_onsets(samples, rate)
        truth = lowest_times(period, samples.size / rate)
        errors = [(o - truth[np.abs(truth - o).argmin()]) * 1e3 for o in onsets]
        ax1.plot(onsets, errors, "o-", label=f"compensate {name}")
        if len(onsets) > 1:
            t0 = truth[np.abs(truth - onsets[1]).argmin()]
            lo, hi = int((t0 - 0.06) * rate), int((t0 + 0.08) * rate)
            ax2.plot(
                (np.arange(lo, hi) / rate - t0) * 1e3, samples[lo:hi], lw=0.8, label=f"compensate {name}"
            )
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set_xlabel("session time (s)")
    ax1.set_ylabel("onset - photo lowest (ms)")
    ax1.set_title("Drum onset in the rendered WAV against the moment the photo is lowest")
    ax1.legend()
    ax2.axvline(0, color="k", lw=0.8, label="photo lowest")
    ax2.set_xlabel("ms around the second hit's lowest moment")
    ax2.set_ylabel("sample")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "timing.png", dpi=110)
    print(f"wrote {out / 'timing.json'}, {out / 'timing.png'}; frame clock zero {clock_zero_ns(rec)} ns")


if __name__ == "__main__":
    main()
