#!/usr/bin/env bash
# Issue #23 on the lent GPU machine (one GPU, root, no systemd, no network; PyTorch in /opt/torch/.venv):
#   benchmarks/gpu_site/run.sh OUTDIR [TARBALL]       (carry: .whl build/models; TARBALL: OUTDIR packed at the end)
# 1. the backend play of site.yml through a local connection (benchmarks/gpu_site/inventory.yml), offline:
#    Ansible from carried wheels (.whl/tools, .whl/collections), the host's wheels from the carried lock
#    selection (.whl), the ONNX model the controller converted (build/models: `lalelu convert`, as site.yml
#    does on a controller that has the convert extra);
# 2. the installed backend started as its unit would (as_unit.py): cold (first start) and warm (second);
# 3. `lalelu check --role backend` on the installed configuration;
# 4. an edge (the installed app) playing through it at 100 and 200 fps, 20 s each;
# 5. the unit's start with compile = true, cold and warm (torch.compile's cache in the unit's CacheDirectory).
set -uo pipefail
out="$1"; mkdir -p "$out"
[ -n "${2:-}" ] && trap 'tar czf "$2" -C "$out" .' EXIT
here="$PWD"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,pstate --format=csv; lscpu | grep -E "Model name|^CPU\(s\)";
  /opt/torch/.venv/bin/python -c "import torch; print('torch', torch.__version__)"; grep -E ' / ' /proc/mounts; } | tee "$out/machine.txt"
/usr/bin/python3 -m venv /tmp/controller
# no cryptography (no vault, no SSH there): 5 MB less to carry
/tmp/controller/bin/pip install -q --no-index --no-deps .whl/tools/{ansible_core,resolvelib,jinja2,markupsafe,pyyaml,packaging}-*.whl
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$here/.whl/tools" ANSIBLE_COLLECTIONS_PATH="$here/.whl/collections"
echo "== site.yml, backend play (--tags app,gpu), local connection"
t0=$SECONDS
(cd ansible && /tmp/controller/bin/ansible-playbook -i ../benchmarks/gpu_site/inventory.yml site.yml --tags app,gpu) \
  > "$out/site.log" 2>&1
echo "site.yml exit $? in $((SECONDS - t0)) s" | tee -a "$out/site.log"
grep -E "^(TASK|ok|changed|fatal|skipping)|PLAY RECAP|gpu-machine +:|msg" "$out/site.log" | tail -60
test -x /opt/lalelu/venv/bin/lalelu || { tail -80 "$out/site.log"; exit 1; }
cp /etc/lalelu/backend.toml "$out/backend.toml"
unit=/etc/systemd/system/lalelu-backend.service
for start in cold warm; do
  rm -f "$out/ready-$start.json"
  setsid python3 benchmarks/gpu_site/as_unit.py "$unit" --ready "$out/ready-$start.json" --log "$out/backend-$start.log" &
  pid=$!
  for _ in $(seq 600); do [ -s "$out/ready-$start.json" ] && break; sleep 0.2; done
  echo "== $start start: $(cat "$out/ready-$start.json")"
  grep -m3 "engine" "$out/backend-$start.log"
  if [ "$start" = cold ]; then kill "$pid"; wait "$pid"; fi
done
echo "== lalelu check --role backend (the installed configuration)"
lalelu check --role backend --frames 500 2>&1 | tee "$out/check-backend.txt"
for fps in 100 200; do
  echo "== edge at $fps fps through the provisioned backend"
  lalelu edge --config benchmarks/gpu_site/edge.toml --fps "$fps" --seconds 20 --telemetry "$out/edge-$fps.jsonl" \
    --json "$out/edge-$fps.json" > "$out/edge-$fps.log" 2>&1
  echo "edge exit $?"; tail -3 "$out/edge-$fps.log"
  lalelu bench --from-telemetry "$out/edge-$fps.jsonl" 2>&1 | tee "$out/edge-$fps.txt" | tail -12
done
kill "$pid"; wait "$pid"
# 5. compile = true: the first start compiles into the unit's CacheDirectory (/var/cache/lalelu), the second
#    finds it there (what a restart or a reboot gets)
sed -i 's/^\[engine\]$/[engine]\ncompile = true/' /etc/lalelu/backend.toml
grep -A3 '^\[engine\]' /etc/lalelu/backend.toml
for start in compile-cold compile-warm; do
  rm -f "$out/ready-$start.json"
  setsid python3 benchmarks/gpu_site/as_unit.py "$unit" --ready "$out/ready-$start.json" --log "$out/backend-$start.log" &
  pid=$!
  for _ in $(seq 1500); do [ -s "$out/ready-$start.json" ] && break; sleep 0.2; done
  echo "== $start start: $(cat "$out/ready-$start.json")"
  kill "$pid"; wait "$pid"
done
du -sh /var/cache/lalelu/* 2>/dev/null
