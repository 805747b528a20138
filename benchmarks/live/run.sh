#!/usr/bin/env bash
# The live-latency measurements of issue #14 on the lent GPU machine (PyTorch there):
#   benchmarks/live/run.sh MODEL.onnx OUTDIR [LABEL]
# MODEL.onnx: `lalelu convert lalelu/models/movenet_singlepose_lightning_int8_4.tflite --to onnx`.
# Writes OUTDIR/LABEL-*.{txt,json,png}: the engine back-to-back and paced like a camera, then the demo at
# 100 and 200 fps with both apps' per-frame telemetry, summarized and drawn by `bench --from-telemetry`.
set -uo pipefail
model="$1"; out="$2"; label="${3:-run}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
cfg="$out/$label-demo.toml"
sed "s#^model = .*#model = \"$model\"#" benchmarks/live/demo-torch-cuda.toml > "$cfg"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,pstate,power.draw --format=csv | tee "$out/$label-gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/$label-gpu.txt"
echo "== engine: back-to-back and paced at 100 and 200 Hz"
for pace in 100 200; do
  python3 -m lalelu.cli bench --engine torch-cuda --model "$model" --configs graph+pinned --pace "$pace" \
    --warmup 200 --n 2000 --cpu-affinity 2 --quiet --json "$out/$label-bench-$pace.json" | tee "$out/$label-bench-$pace.txt"
done
for fps in 100 200; do
  echo "== live: lalelu demo at $fps fps"
  python3 -m lalelu.cli demo --config "$cfg" --seconds "${SECONDS_PER_DEMO:-20}" --fps "$fps" --quiet \
    --telemetry "$out/$label-tel-$fps" | tee "$out/$label-demo-$fps.json"
  python3 -m lalelu.cli bench --from-telemetry "$out/$label-tel-$fps/edge.jsonl" "$out/$label-tel-$fps/backend.jsonl" \
    --plot "$out" | tee "$out/$label-live-$fps.txt"
  mv "$out/edge.png" "$out/$label-live-$fps.png"
done
