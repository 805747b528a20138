#!/usr/bin/env bash
# The strokes benchmark's live sessions on a lent GPU machine (PyTorch in /opt/torch/.venv, no network):
#   bash benchmarks/strokes/gpu-run.sh FPS OUT.tgz [CASES]   (carry: .whl, .gpu: .gpu/lightning.onnx from `lalelu convert`)
# Records each case (--keep) with the torch-cuda demo configuration; the recordings are replayed and rendered
# on the controller: tools/bench_strokes.py --config benchmarks/live/demo-torch-cuda.toml --fps FPS --from DIR.
# Not run yet: written 2026-12-06, when no GPU machine could be started; the H200 table in docs/timing.md came from
# the same steps run by hand (bench_strokes.py --keep there, --from here).
set -uo pipefail
fps="$1"; tgz="$2"; cases="${3:-}"; keep=/tmp/strokes
mkdir -p "$keep"; trap 'tar czf "$tgz" -C "$keep" .' EXIT; trap 'exit 143' TERM
/opt/torch/.venv/bin/python -m pip install -q --no-index --no-deps --target /tmp/extra .whl/*.whl
export PYTHONPATH="$PWD:/tmp/extra" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; lscpu | grep -E "Model name"; } | tee "$keep/machine.txt"
/opt/torch/.venv/bin/python tools/bench_strokes.py --config benchmarks/live/demo-torch-cuda.toml --fps "$fps" \
  --seconds 12 ${cases:+--cases "$cases"} --keep "$keep" 2>&1 | grep -v "^INFO" | tee "$keep/live-$fps.txt"
