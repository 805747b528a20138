#!/usr/bin/env bash
# The live-latency measurements of issue #14 on the lent GPU machine (PyTorch there):
#   benchmarks/live/run.sh MODEL.onnx OUTDIR [LABEL]
# MODEL.onnx: `lalelu convert lalelu/models/movenet_singlepose_lightning_int8_4.tflite --to onnx`.
# Writes OUTDIR/LABEL-*: the engine back-to-back and paced like a camera (bench --pace), then the demo
# at 100 and 200 fps (SECONDS_PER_DEMO, default 60) with both apps' per-frame telemetry, summarized and
# drawn by `bench --from-telemetry`; the demos for each COMPILE value (default "false true").
set -uo pipefail
model="$1"; out="$2"; label="${3:-run}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,pstate,power.draw --format=csv | tee "$out/$label-gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/$label-gpu.txt"
echo "== engine: back-to-back and paced at 100 and 200 Hz"
for pace in 100 200; do
  python3 -m lalelu bench --engine torch-cuda --model "$model" --configs graph+pinned --pace "$pace" \
    --warmup 200 --n 2000 --cpus 2 --quiet --json "$out/$label-bench-$pace.json" | tee "$out/$label-bench-$pace.txt"
done
for compile in ${COMPILE:-false true}; do
  cfg="$out/$label-demo-compile-$compile.toml"
  sed -e "s#^model = .*#model = \"$model\"#" -e "s#^compile = .*#compile = $compile#" \
    benchmarks/live/demo-torch-cuda.toml > "$cfg"
  for fps in 100 200; do
    run="$label-compile-$compile-$fps"
    echo "== live: lalelu demo at $fps fps, compile = $compile"
    python3 -m lalelu demo --config "$cfg" --seconds "${SECONDS_PER_DEMO:-60}" --fps "$fps" --quiet \
      --telemetry "$out/$run" | tee "$out/$run.json"
    python3 -m lalelu bench --from-telemetry "$out/$run/edge.jsonl" "$out/$run/backend.jsonl" \
      --plot "$out" | tee "$out/$run.txt"
    mv "$out/edge.png" "$out/$run.png"
  done
done
