#!/usr/bin/env bash
# `make demo`: the most complete end-to-end job that exists, on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
itera() { node dist/cli/itera.js "$@"; }

echo "== device profiles"
itera profiles

echo "== the house model Itera-Lite tiny (SSM + MoE) writes Shakespeare"
itera run models/itera-lite-tiny -p "ROMEO:" -n 160 --temperature 0.8 --top-k 20 --seed 7
echo

echo "== fleet: 3 simulated devices benchmarked over MQTT (embedded broker, simulated INA219 meters)"
fleet_pids=()
fleet_dir=$(mktemp -d)
# Stop what this section started, by pid and newest first (agents before the broker), even on failure.
fleet_stop() {
  for ((i = ${#fleet_pids[@]} - 1; i >= 0; i--)); do
    kill "${fleet_pids[i]}" 2>/dev/null || true
    wait "${fleet_pids[i]}" 2>/dev/null || true
  done
  fleet_pids=()
  rm -rf "$fleet_dir"
}
trap fleet_stop EXIT
fleet_out=/tmp/itera-demo-fleet-report
node dist/cli/itera.js broker --port 0 --json >"$fleet_dir/broker.json" &
fleet_pids+=($!)
for _ in $(seq 200); do grep -q '"url"' "$fleet_dir/broker.json" 2>/dev/null && break; sleep 0.1; done
fleet_url=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).url)' "$fleet_dir/broker.json")
node dist/cli/itera.js fleet simulate --devices 3 --broker "$fleet_url" --fleet demo --model models/itera-lite-micro \
  --state-dir "$fleet_dir/agents" --telemetry-interval 1 &
fleet_pids+=($!)
itera fleet bench --broker "$fleet_url" --fleet demo --devices 3 --model itera-lite-micro \
  --tests pp32,tg32 --repetitions 3 --warmup 1 --min-duration 0.5 --timeout 180 \
  --db "$fleet_dir/fleet.db" --out "$fleet_out"
echo "(the report as md, csv, json and an SVG chart: $fleet_out/)"
fleet_stop
trap - EXIT
