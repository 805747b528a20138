#!/usr/bin/env bash
# Busy polling or sleeping, side by side, on the lent GPU machine:
#   benchmarks/live/poll-ab.sh MODEL.onnx OUTDIR [LABEL]
# The demo (torch-cuda, CUDA graph, fp32) for each COMPILE value (default "false true"), at each FPS
# (default "100 200"), with [backend] and [edge] busy_poll_ms = 0 (sleep) and POLL_MS (default 20, above
# the frame period: always polling while frames flow), interleaved; SECONDS_PER_DEMO each (default 30).
# Every run keeps both apps' telemetry and its stage table (bench --from-telemetry); the last line of each
# table, the round trip cut into its legs, is what this A/B is about.
set -uo pipefail
model="$1"; out="$2"; label="${3:-poll}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,pstate --format=csv | tee "$out/$label-gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)|Hypervisor" | tee -a "$out/$label-gpu.txt"
for compile in ${COMPILE:-false true}; do
  for fps in ${FPS:-100 200}; do
    for poll in 0 "${POLL_MS:-20}"; do
      run="$label-compile-$compile-$fps-poll$poll"
      cfg="$out/$run.toml"
      sed -e "s#^model = .*#model = \"$model\"#" -e "s#^compile = .*#compile = $compile#" \
        -e "s#^busy_poll_ms = [0-9.]*#busy_poll_ms = $poll#" \
        benchmarks/live/demo-torch-cuda.toml > "$cfg"
      echo "== $run"
      python3 -m lalelu demo --config "$cfg" --seconds "${SECONDS_PER_DEMO:-30}" --fps "$fps" \
        --quiet --telemetry "$out/$run" | tee "$out/$run.json"
      python3 -m lalelu bench --from-telemetry "$out/$run/edge.jsonl" "$out/$run/backend.jsonl" \
        > "$out/$run.txt"
      tail -8 "$out/$run.txt"
      gzip -f "$out/$run"/*.jsonl
    done
  done
done
