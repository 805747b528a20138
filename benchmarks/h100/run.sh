#!/usr/bin/env bash
# The GPU measurements of benchmarks/h100/, as run on the lent H100 (PyTorch there, no TensorFlow):
#   benchmarks/h100/run.sh MODEL.onnx OUTDIR
# MODEL.onnx: `lalelu convert lalelu/models/movenet_singlepose_lightning_int8_4.tflite --to onnx`.
set -uo pipefail
model="$1"; out="$2"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,pstate,power.draw --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch, onnx; print("torch", torch.__version__, "cuda", torch.version.cuda, "onnx", onnx.__version__)'
echo "== keypoints: GPU variants against the CPU path"
python3 tools/gpu_check.py "$model" --json "$out/keypoints.json"
echo "== lalelu bench (torch-cuda)"
python3 -m lalelu bench --engine torch-cuda --model "$model" --warmup 200 --n 2000 --cpus 3 \
  --json "$out/bench.json" --plot "$out" --quiet | tee "$out/bench.txt"
echo "== end to end: lalelu demo with the torch-cuda backend"
for fps in 100 200; do
  python3 -m lalelu demo --config benchmarks/h100/demo-torch-cuda.toml --seconds 20 --fps "$fps" --quiet \
    | tee "$out/demo-$fps.json"
done
