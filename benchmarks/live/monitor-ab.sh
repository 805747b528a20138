#!/usr/bin/env bash
# Does the edge's monitor cost the GPU instrument anything? On the lent GPU machine:
#   benchmarks/live/monitor-ab.sh MODEL.onnx OUTDIR
# The demo (torch-cuda, CUDA graph, fp32, 100 fps, SECONDS each) with [monitor] off, then on with one page
# reading it (benchmarks/live/monitor_client.py: the WebSocket a page reads, without a browser's drawing),
# A B A B. aiohttp comes from the carried wheel folder .whl (the machine reaches no index).
set -uo pipefail
model="$1"; out="$2"; seconds="${SECONDS_PER_DEMO:-25}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --find-links .whl aiohttp 2>&1 | tail -1
python3 --version
for variant in off page off page; do
  n=$((${n:-0} + 1))
  cfg="$out/monitor-$variant.toml"
  sed -e "s#^model = .*#model = \"$model\"#" benchmarks/live/demo-torch-cuda.toml > "$cfg"
  if [ "$variant" = off ]; then
    printf '\n[monitor]\nenabled = false\n' >> "$cfg"
  else
    printf '\n[monitor]\nport = 8790\n' >> "$cfg"
    python3 benchmarks/live/monitor_client.py ws://127.0.0.1:8790/ws "$seconds" > "$out/$n-$variant-client.json" &
  fi
  echo "== $n: monitor $variant"
  python3 -m lalelu demo --config "$cfg" --seconds "$seconds" --quiet | tee "$out/$n-$variant.json"
  wait
  cat "$out/$n-$variant-client.json" 2>/dev/null
done
