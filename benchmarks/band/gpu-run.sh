#!/usr/bin/env bash
# The band benchmark (#26) on a lent GPU machine (PyTorch in /opt/torch/.venv, no network):
#   bash benchmarks/band/gpu-run.sh OUTDIR [CELLS...]
# carry: .whl (cp312 wheels), .gpu (.gpu/lightning.onnx from `lalelu convert`), .base (the checkout before
# the batching: git archive be8fd4a lalelu lalelu_commands edge_app backend_app | tar -x -C .base).
# 1. the batched graphs against single frames (gpu_check.py); 2. tools/bench_band.py: baseline, serial and
# batched backends, K edges each pinned, side by side.
set -uo pipefail
out="$1"; shift
mkdir -p "$out"
/opt/torch/.venv/bin/python -m pip install -q --no-index --no-deps --target /tmp/extra .whl/*.whl
export PYTHONPATH="$PWD:/tmp/extra" PYTHONUNBUFFERED=1
py=/opt/torch/.venv/bin/python
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; lscpu | grep -E "Model name|^CPU\(s\)"; } | tee "$out/machine.txt"
[ -n "${SKIP_CHECK:-}" ] || $py benchmarks/band/gpu_check.py .gpu/lightning.onnx "$out/gpu-check.json" 2>&1 | grep -v "^INFO" | tee "$out/gpu-check.txt"
$py tools/bench_band.py --config benchmarks/live/demo-torch-cuda.toml --cells "${@:-1,2,4,8@100}" \
  --seconds "${SECONDS_PER_CELL:-8}" --backend-cpus 2 --edge-cpus 4-15 --variants "${VARIANTS:-batched,batched-4}" ${BASELINE:+--baseline "$BASELINE"} \
  --keep /tmp/band --json "$out/band.json" 2>&1 | tee "$out/band.txt"
tar czf "$out/cells.tgz" -C /tmp/band .
