#!/usr/bin/env bash
# Is it the GPU clock's NVML query? The slow clusters of #14 with and without it, side by side in one run:
#   benchmarks/live/nvml-ab.sh MODEL.onnx OUTDIR
# The engine paced at 100 Hz, NVML read after every frame or never, interleaved A B A B (30 s each); then
# the live demo at 100 fps with the backend's sampler every 50 ms or off (30 s each).
set -uo pipefail
model="$1"; out="$2"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,pstate,power.draw --format=csv | tee "$out/ab-gpu.txt"
for round in 1 2; do
  for clock in on off; do
    flag=""; [ "$clock" = off ] && flag="--no-gpu-clock"
    python3 -m lalelu bench --engine torch-cuda --model "$model" --configs graph+pinned --pace 100 $flag \
      --warmup 200 --n 3000 --cpus 2 --quiet --json "$out/ab-bench-$clock-$round.json" \
      | grep "@100Hz" | tee "$out/ab-bench-$clock-$round.txt"
  done
done
for period in 50 0; do
  cfg="$out/ab-demo-$period.toml"
  sed -e "s#^model = .*#model = \"$model\"#" -e "s#^\[backend\]#[backend]\ngpu_clock_period_ms = $period#" \
    benchmarks/live/demo-torch-cuda.toml > "$cfg"
  python3 -m lalelu demo --config "$cfg" --seconds 30 --fps 100 --quiet --telemetry "$out/ab-demo-$period" \
    | tee "$out/ab-demo-$period.json"
  python3 -m lalelu bench --from-telemetry "$out/ab-demo-$period/edge.jsonl" "$out/ab-demo-$period/backend.jsonl" \
    | tee "$out/ab-demo-$period.txt"
done
