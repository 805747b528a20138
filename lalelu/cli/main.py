"""The `lalelu` command: edge, backend, pose, replay, demo, bench, soak, check, convert.

Each subcommand is one function, chosen by argparse (`set_defaults(func=...)`). Exit codes: 0 done (or
ready to play), 1 a run that failed or a no-go, 2 a usage mistake or bad input (argparse's own, and every
LaleluError about what was given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lalelu import __version__
from lalelu.cli.bench import DEFAULT_CONFIGS, DEFAULT_CONFIGS_OTHER
from lalelu.config import CAMERA_SOURCES, OUTPUT_KINDS, Config, load_config, override
from lalelu.engine import ENGINE_NAMES
from lalelu.errors import LaleluError
from lalelu.logs import error_line, setup_logging


class HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth saying and the help does not
    say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, "", argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _cpu_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give CPU numbers like 2 or 2,3") from None


STDOUT = Path("-")  # --json - : the JSON goes to standard output instead of the table


def _write_json(target: Path, data: object) -> None:
    if target == STDOUT:
        print(json.dumps(data))
    else:
        target.write_text(json.dumps(data, indent=1))


def _json_file(p: argparse.ArgumentParser, help_text: str) -> None:
    """--json FILE, the same option in every subcommand (a file to write, never a flag)."""
    p.add_argument("--json", type=Path, metavar="FILE", help=help_text)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration of this host (see configs/)"
    )
    p.add_argument("--engine", choices=ENGINE_NAMES, help="override [engine] kind")
    p.add_argument("--model", help="override [engine] model (path)")
    p.add_argument("--threads", type=int, help="override [engine] threads")
    p.add_argument("--cpus", type=_cpu_list, help="comma-separated CPUs to pin to (override [ROLE] cpus)")
    p.add_argument(
        "--fifo",
        action=argparse.BooleanOptionalAction,
        help="ask for SCHED_FIFO for the loop, or not (override [ROLE] sched_fifo)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug lines too")


def _config(args: argparse.Namespace, role: str) -> Config:
    cfg = load_config(args.config)
    cfg = override(cfg, "engine", kind=args.engine, model=args.model, threads=args.threads)
    cfg = override(cfg, role, cpus=args.cpus, sched_fifo=args.fifo)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lalelu",
        description="lalelu drums: gesture-controlled percussion",
        epilog="exit status: 0 done, 1 a failed run or a no-go, 2 a usage mistake or bad input",
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    edge = sub.add_parser(
        "edge", formatter_class=HelpWithDefaults, help="capture frames, get poses (backend or local), play"
    )
    _common(edge)
    edge.add_argument("--backend", help="HOST:PORT of the backend; '' infers locally")
    edge.add_argument(
        "--no-fallback",
        action="store_true",
        help="exit when the backend is lost instead of inferring locally",
    )
    edge.add_argument("--source", choices=CAMERA_SOURCES, help="override [camera] source")
    edge.add_argument("--fps", type=float, help="override [camera] fps")
    edge.add_argument("--seconds", type=float, help="stop after this long (default: run until stopped)")
    edge.add_argument(
        "--telemetry", metavar="FILE", help="write per-frame telemetry as JSON lines to this file"
    )
    _json_file(edge, "write the final summary (with all stages) here")
    edge.add_argument(
        "--state-file", metavar="FILE", help="override [edge] state_file (JSON state at every summary)"
    )
    edge.add_argument(
        "--record", type=Path, metavar="FILE", help="record the pose stream to this .npz for `lalelu replay`"
    )
    edge.add_argument("--mapping", help="override [output] mapping (a TOML path or a bundled name)")
    edge.add_argument("--output", choices=OUTPUT_KINDS, help="override [output] kind")

    replay = sub.add_parser(
        "replay",
        formatter_class=HelpWithDefaults,
        help="run a recorded pose stream through a mapping and print the hits",
    )
    replay.add_argument("recording", type=Path, help="a .npz written by `lalelu edge --record`")
    replay.add_argument("--mapping", default="", help="mapping TOML path or bundled name (default two-hands)")
    replay.add_argument(
        "--wav", type=Path, metavar="FILE", help="render the hits with the built-in synth to this WAV"
    )
    replay.add_argument(
        "--config",
        type=Path,
        help="the session's configuration: its [output] latency_ms and synth_* settings, and, for the still "
        "photo, its [camera] motion, whose true impacts each hit is timed against (default: built-in)",
    )

    backend = sub.add_parser("backend", formatter_class=HelpWithDefaults, help="the inference server")
    _common(backend)
    backend.add_argument("--host", help="override [backend] listen_host")
    backend.add_argument("--port", type=int, help="override [backend] port (0 = any free port)")
    backend.add_argument("--seconds", type=float, default=0.0, help="stop after this long")
    backend.add_argument(
        "--ready-file", type=Path, metavar="FILE", help="write the bound address here once serving"
    )
    backend.add_argument(
        "--telemetry", metavar="FILE", help="write per-frame stage telemetry as JSON lines to this file"
    )
    _json_file(backend, "write the final summary (counters, stages) here when stopped")

    pose = sub.add_parser(
        "pose", formatter_class=HelpWithDefaults, help="run the model on one image and print the keypoints"
    )
    _common(pose)
    pose.add_argument("image", type=Path, help="a photo (PNG or JPEG) with one person in it")
    _json_file(pose, "write the keypoints as JSON here ('-': standard output, instead of the table)")
    pose.add_argument(
        "--out", type=Path, help="write the image with the skeleton, the mapping's zones and lines drawn"
    )
    pose.add_argument(
        "--mapping", help="mapping whose min_score, zones and lines --out draws (default: [output] mapping)"
    )

    bench = sub.add_parser(
        "bench", formatter_class=HelpWithDefaults, help="inference benchmark, configurations side by side"
    )
    bench.add_argument(
        "--engine",
        default="litert",
        choices=[n for n in ENGINE_NAMES if n != "auto"],  # a benchmark names what it times
        help="the pose engine to time",
    )
    bench.add_argument(
        "--model", default="", help="model path (default: the bundled Lightning int8; torch-cuda: an .onnx)"
    )
    bench.add_argument("--threads", default="2", help="thread counts to compare, e.g. 1,2")
    bench.add_argument("--cpus", type=_cpu_list, default="1", help="the core of the pinned configurations")
    bench.add_argument(
        "--configs",
        default="",
        help="comma-separated; each joins plain|reference|eager|graph, pinned, fifo, fp16 with '+' "
        f"(default: {DEFAULT_CONFIGS_OTHER}; torch-cuda: {DEFAULT_CONFIGS['torch-cuda']})",
    )
    bench.add_argument("--fifo", action="store_true", help="shorthand: add pinned+fifo to --configs")
    bench.add_argument(
        "--pace",
        type=float,
        default=0.0,
        metavar="FPS",
        help="also run each configuration paced at FPS frames per second, as a camera feeds the live loop",
    )
    bench.add_argument(
        "--no-gpu-clock",
        action="store_true",
        help="do not read the GPU's SM clock after each inference (an NVML query, outside the timed region)",
    )
    bench.add_argument("--warmup", type=int, default=50, help="untimed inferences first")
    bench.add_argument("--n", type=int, default=500, help="timed inferences per configuration")
    _json_file(bench, "write results with machine facts and all samples here")
    bench.add_argument("--quiet", action="store_true", help="no progress, only the table")
    bench.add_argument(
        "--plot", type=Path, metavar="DIR", help="write histogram + timeline PNGs into this folder"
    )
    bench.add_argument(
        "--from-telemetry",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="instead of benchmarking, summarize (and --plot) a `lalelu edge --telemetry` file, a "
        "`lalelu backend --telemetry` file, or both",
    )

    conv = sub.add_parser(
        "convert",
        formatter_class=HelpWithDefaults,
        help="MoveNet to ONNX (checked), a TensorRT engine, or TF-TRT",
    )
    conv.add_argument("source", type=Path, help="a TF2 SavedModel directory or a .tflite file")
    conv.add_argument("--to", choices=("onnx", "tensorrt", "tf-trt"), default="onnx", help="what to make")
    conv.add_argument("--out", type=Path, help="where the artifact goes (default: beside the source)")
    conv.add_argument("--fp16", action="store_true", help="TensorRT / TF-TRT in half precision")
    conv.add_argument("--opset", type=int, default=17, help="ONNX opset of the converted model")

    demo = sub.add_parser(
        "demo",
        formatter_class=HelpWithDefaults,
        help="backend + edge on this machine with the bundled model and photo",
    )
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the edge plays")
    demo.add_argument("--config", type=Path, help="demo configuration (default: the bundled demo.toml)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar or logs, only the JSON line")
    _json_file(demo, "also write the result (the JSON line) here")
    demo.add_argument("--fps", type=float, help="camera rate (default: the demo configuration's, 100)")
    demo.add_argument(
        "--telemetry",
        type=Path,
        metavar="DIR",
        help="write both apps' per-frame telemetry here (edge.jsonl, backend.jsonl) for bench --from-telemetry",
    )
    demo.add_argument(
        "--wav",
        type=Path,
        metavar="FILE",
        help="render the hits it played with the built-in synth to this WAV and time their onsets",
    )
    demo.add_argument(
        "--record", type=Path, metavar="FILE", help="keep the pose stream (.npz) for `lalelu replay`"
    )

    soak = sub.add_parser(
        "soak",
        formatter_class=HelpWithDefaults,
        help="edge + backend for a long time: lost frames, memory growth, drift",
    )
    soak.add_argument("--minutes", type=float, default=30.0, help="how long both apps run")
    soak.add_argument("--config", type=Path, help="configuration of both (default: the bundled demo.toml)")
    soak.add_argument("--fps", type=float, help="camera rate (default: the configuration's)")
    soak.add_argument("--interval-s", type=float, default=60.0, help="width of one row of the report")
    soak.add_argument("--sample-s", type=float, default=5.0, help="how often resident memory is read")
    _json_file(soak, "write the report (with every memory sample) here")
    soak.add_argument("--quiet", action="store_true", help="no progress, only the report")

    check = sub.add_parser(
        "check",
        formatter_class=HelpWithDefaults,
        help="preflight: go / no-go table for this host; exit 1 on no-go",
    )
    _common(check)
    check.add_argument(
        "--role",
        choices=("edge", "backend"),
        default="edge",
        help="which app this host runs; without --config its /etc/lalelu/ROLE.toml is read where it exists",
    )
    check.add_argument("--backend", help="override [edge] backend (HOST:PORT; '' = local inference)")
    check.add_argument("--frames", type=int, default=50, help="frames of the live latency measurement")
    check.add_argument("--max-p99-ms", type=float, default=50.0, help="the live latency's p99 limit")
    _json_file(check, "also write the checks as JSON here ('-': standard output)")
    check.add_argument(
        "--min-fps-ratio",
        type=float,
        default=0.9,
        help="the share of [camera] fps the camera must reach (default 0.9)",
    )
    for name, func in (
        ("edge", _edge),
        ("replay", _replay),
        ("backend", _backend),
        ("pose", _pose),
        ("bench", _bench),
        ("convert", _convert),
        ("demo", _demo),
        ("soak", _soak),
        ("check", _check),
    ):
        sub.choices[name].set_defaults(func=func)
    return parser


def _edge(args: argparse.Namespace) -> int:
    from lalelu.edge.loop import run_edge

    cfg = _config(args, "edge")
    cfg = override(
        cfg,
        "edge",
        backend=args.backend,
        seconds=args.seconds,
        telemetry=args.telemetry,
        state_file=args.state_file,
        fallback=False if args.no_fallback else None,
    )
    cfg = override(cfg, "camera", source=args.source, fps=args.fps)
    cfg = override(cfg, "output", mapping=args.mapping, kind=args.output)
    summary = run_edge(cfg, args.json, args.record)
    return 0 if summary["poses_received"] > 0 else 1


def _backend(args: argparse.Namespace) -> int:
    from lalelu.backend.main import run_backend

    cfg = _config(args, "backend")
    cfg = override(cfg, "backend", listen_host=args.host, port=args.port, telemetry=args.telemetry)
    summary = run_backend(cfg, args.seconds, args.ready_file)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


def _pose(args: argparse.Namespace) -> int:
    from lalelu.cli.pose_image import estimate_pose, keypoints_json, read_rgb
    from lalelu.engine import engine_from_config

    cfg = _config(args, "edge")
    rgb = read_rgb(args.image)
    with engine_from_config(cfg.engine, warm=False) as engine:  # one image: nothing to warm up for
        kp = estimate_pose(engine, rgb)
    result = keypoints_json(kp)
    if args.json is not None:
        _write_json(args.json, result)
    if args.json != STDOUT:
        for k in result["keypoints"]:
            print(f"{k['name']:<15} x {k['x']:8.1f}  y {k['y']:8.1f}  score {k['score']:.2f}")
    if args.out:
        import cv2

        from lalelu.drawing import draw_pose
        from lalelu.gestures.consumer import resolve_mapping
        from lalelu.gestures.mapping import load_mapping

        mapping = load_mapping(resolve_mapping(args.mapping or cfg.output.mapping))
        if not cv2.imwrite(str(args.out), draw_pose(rgb, kp, mapping)):
            raise LaleluError(f"cannot write {args.out}: use a .png or .jpg name in a writable folder")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from lalelu.cli.bench import format_table, run_bench

    if args.from_telemetry:
        from lalelu.cli.plots import plot_telemetry, split_telemetry, telemetry_table

        edge_rows, backend_rows = split_telemetry(args.from_telemetry)
        print(telemetry_table(edge_rows, backend_rows))
        if args.plot:
            out = args.plot / (args.from_telemetry[0].stem + ".png")
            print(f"plot: {plot_telemetry(edge_rows, backend_rows, out)}")
        return 0

    if args.plot:  # before minutes of benchmarking, not after them
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise LaleluError(
                "--plot needs matplotlib: pip install 'lalelu-drums[bench]' (or leave --plot out)"
            )
    if len(args.cpus) != 1:
        raise LaleluError(
            f"--cpus {','.join(map(str, args.cpus))}: the benchmark pins to one core, e.g. --cpus 2"
        )
    chosen = args.configs or DEFAULT_CONFIGS.get(args.engine, DEFAULT_CONFIGS_OTHER)
    configs = [c for c in chosen.split(",") if c]
    if args.fifo and "pinned+fifo" not in configs:
        configs.append("pinned+fifo")
    try:
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        raise LaleluError(f"--threads {args.threads!r}: give thread counts like 1,2") from None
    if not 0 <= args.pace <= 10_000:
        raise LaleluError(f"--pace {args.pace:g}: give frames per second between 1 and 10000 (0 = not paced)")
    report = run_bench(
        args.engine,
        args.model,
        threads,
        configs,
        args.cpus[0],
        args.warmup,
        args.n,
        args.quiet,
        args.pace,
        not args.no_gpu_clock,
    )
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report))
    if args.plot:
        from lalelu.cli.plots import plot_bench

        for path in plot_bench(report, args.plot):
            print(f"plot: {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lalelu.cli.convert import run_convert

    result = run_convert(
        args.source, args.to, args.out, args.fp16, args.opset, log=lambda m: print(m, file=sys.stderr)
    )
    print(json.dumps(result))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from lalelu.cli.wav import clock_zero_ns, session_impacts, session_wav, sound_times_s, versus_impacts
    from lalelu.gestures.consumer import resolve_mapping
    from lalelu.gestures.mapping import load_mapping
    from lalelu.gestures.recording import hits_as_lines, load_recording, replay

    rec = load_recording(args.recording)
    mapping = load_mapping(resolve_mapping(args.mapping))
    cfg = load_config(args.config)
    hits = replay(rec, mapping, cfg.output.latency_ms)
    t0 = clock_zero_ns(rec)
    for line in hits_as_lines(hits, t0, cfg.output.latency_ms):
        print(line)
    final: dict = {"poses": len(rec["t_ns"]), "hits": len(hits)}
    impacts = session_impacts(cfg, rec) if args.config is not None else None
    if impacts is not None:
        final["vs_impact"] = versus_impacts(sound_times_s(rec, hits, cfg.output.latency_ms), impacts)
    if args.wav is not None:
        final["wav"] = session_wav(rec, hits, mapping, cfg, args.wav, impacts)
    print(json.dumps(final))
    return 0


def _check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lalelu.cli.check import NO_GO, format_checks, run_checks

    if args.config is None:
        from lalelu.config import installed_config

        args.config = installed_config(args.role)
        if args.config is not None:
            print(f"configuration: {args.config} (this host's; --config reads another)", file=sys.stderr)
    cfg = _config(args, args.role)
    if args.backend is not None:
        cfg = override(cfg, "edge", backend=args.backend)
    if not 0 < args.min_fps_ratio <= 1:
        raise LaleluError(f"--min-fps-ratio {args.min_fps_ratio:g}: give a share between 0 and 1, e.g. 0.9")
    checks = run_checks(cfg, args.role, args.frames, args.max_p99_ms, args.min_fps_ratio)
    ready = not any(c.verdict == NO_GO for c in checks)
    if args.json != STDOUT:
        print(format_checks(checks))
    if args.json is not None:
        _write_json(args.json, {"role": args.role, "ready": ready, "checks": [asdict(c) for c in checks]})
    return 0 if ready else 1


def _soak(args: argparse.Namespace) -> int:
    from lalelu.cli.soak import format_soak, run_soak

    report = run_soak(args.minutes, args.config, args.fps, args.interval_s, args.sample_s, args.quiet)
    print(format_soak(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lalelu.cli.demo import demo_verdict, run_demo

    result = run_demo(args.seconds, args.config, args.quiet, args.fps, args.telemetry, args.wav, args.record)
    print(json.dumps(result), flush=True)  # stdout: one JSON line, for scripts
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.quiet:
        print(demo_verdict(result), file=sys.stderr)  # for the person at the terminal
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help may meet a closed pipe too
        level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
        if getattr(args, "quiet", False):
            level = logging.WARNING
        setup_logging(level)
        return int(args.func(args))
    except LaleluError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`lalelu pose x.jpg --json - | head -c 100`): no traceback, and none at exit
        # when Python flushes stdout into the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
