#!/usr/bin/env bash
# Issue #23 on the lent GPU machine (PyTorch there; .gpu/lightning.onnx carried, made by
# `lalelu convert lalelu/models/movenet_singlepose_lightning_int8_4.tflite --to onnx --out .gpu/lightning.onnx`):
#   benchmarks/start/run.sh OUTDIR
# 1. `lalelu check --role backend` with [engine] kind = "auto": which engine, on which device;
# 2. the backend's start, cold and warm, compile false and true (tools/backend_start_times.py);
# 3. `lalelu demo` with compile = true on empty compile caches (a cold machine), at 200 and 100 fps.
set -uo pipefail
out="$1"; mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
cfg=benchmarks/start/h200-auto.toml
nvidia-smi --query-gpu=name,driver_version,clocks.sm,pstate --format=csv | tee "$out/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
echo "== lalelu check --role backend (kind auto)"
python3 -m lalelu check --role backend --config "$cfg" --frames 200 --max-p99-ms 10 2>&1 | tee "$out/check-backend.txt"
echo "== start times"
python3 tools/backend_start_times.py --config "$cfg" --json "$out/start-times.json" 2>&1 | tee "$out/start-times.txt"
echo "== cold demo, compile = true"
sed 's/^compile = .*/compile = true/' "$cfg" > /tmp/auto-compile.toml
for fps in 200 100; do
  rm -rf /tmp/cold-caches
  TORCHINDUCTOR_CACHE_DIR=/tmp/cold-caches/ti TRITON_CACHE_DIR=/tmp/cold-caches/tr \
    python3 -m lalelu demo --config /tmp/auto-compile.toml --seconds 20 --fps "$fps" \
    > "$out/demo-cold-compile-$fps.json" 2> "$out/demo-cold-compile-$fps.log"
  echo "exit $?" >> "$out/demo-cold-compile-$fps.log"
  tail -4 "$out/demo-cold-compile-$fps.log"
done
