#!/usr/bin/env bash
# `make demo`: the most complete end-to-end job that exists, on embedded defaults. Its results stay in
# demo-output/ (git-ignored; ITERA_DEMO_OUT elsewhere): the bundle, the fleet database and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
itera() { node "$repo/dist/cli/itera.js" "$@"; }
out=${ITERA_DEMO_OUT:-$repo/demo-output}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Printed follow-up commands must work from any folder: absolute paths, quoted only where needed.
q() { printf '%q' "$1"; }

echo "== device profiles"
itera profiles
profile=$(itera profiles --detect --json | node -e 'let s="";process.stdin.on("data",(d)=>{s+=d}).on("end",()=>console.log(JSON.parse(s).profile))')
echo "this host fits the profile $profile"

echo "== the house model Itera-Lite tiny (SSM + MoE) writes Shakespeare"
itera run models/itera-lite-tiny -p "ROMEO:" -n 160 --temperature 0.8 --top-k 20 --seed 7
echo

echo "== a bundle for this host ($profile): one standalone executable with the agent, model and runtime"
# The first build downloads the Node 24 binary through npm into ~/.cache/itera; later builds reuse it.
# A rebuild replaces the same folder and .tar.gz, so a re-run never trips over its earlier bundle.
itera build --model models/itera-lite-micro --profile "$profile" --out "$out/bundles" --json >"$out/build.json"
bundle=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).dir)' "$out/build.json")
echo "built $bundle (and $bundle.tar.gz)"
echo "-- $bundle/itera-agent run --prompt \"ROMEO:\" --max-tokens 64"
# The bundle extracts its native files and model on first run: into the demo folder, not ~/.cache,
# emptied first so that re-runs do not pile up one extraction per rebuilt bundle.
rm -rf "$out/agent-cache"
ITERA_AGENT_CACHE="$out/agent-cache" "$bundle/itera-agent" run --prompt "ROMEO:" --max-tokens 64 2>&1 |
  tee "$out/bundle-run.txt"

echo "== fleet: 3 simulated devices benchmarked over MQTT (embedded broker, simulated INA219 meters)"
fleet_pids=()
# Broker address and the agents' outboxes live only as long as the demo: a temp dir of its own.
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
trap 'exit 143' TERM INT # so that a stopped demo still runs fleet_stop
# Background jobs run node itself, not the itera function: $! must be the pid that fleet_stop kills
# (a function runs in a subshell whose kill would leave node running).
node "$repo/dist/cli/itera.js" broker --port 0 --json >"$fleet_dir/broker.json" &
fleet_pids+=($!)
for _ in $(seq 200); do
  grep -q '"url"' "$fleet_dir/broker.json" 2>/dev/null && break
  kill -0 "${fleet_pids[0]}" 2>/dev/null || { echo "demo: the embedded broker exited (its error is above)" >&2; exit 1; }
  sleep 0.1
done
fleet_url=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).url)' "$fleet_dir/broker.json")
node "$repo/dist/cli/itera.js" fleet simulate --devices 3 --broker "$fleet_url" --fleet demo --model models/itera-lite-micro \
  --state-dir "$fleet_dir/agents" --telemetry-interval 1 &
fleet_pids+=($!)
# The database keeps every demo run (history); the report folder shows the latest.
itera fleet bench --broker "$fleet_url" --fleet demo --devices 3 --model itera-lite-micro \
  --tests pp32,tg32 --repetitions 3 --warmup 1 --min-duration 0.5 --timeout 180 \
  --db "$out/fleet.db" --out "$out/report"
echo "-- live telemetry for 3 s: each device's latest tokens/s and mJ/token, with the method that measured it"
itera fleet watch --broker "$fleet_url" --fleet demo --duration 3 --db "$out/fleet.db"
fleet_stop
trap - EXIT TERM INT

itera_cmd="node $(q "$repo/dist/cli/itera.js")"
cat <<EOF

== the demo's results are in $out
  report (md, csv, json, SVG chart): $out/report/
  fleet database:                    $out/fleet.db
  bundle:                            $bundle/ (+ .tar.gz)
The energy figures of the simulated devices say ina219-simulated: they come from tools/ina219-sim, not a meter.
Look again with:
  $itera_cmd fleet report --db $(q "$out/fleet.db")
  $itera_cmd fleet history --db $(q "$out/fleet.db")
  $itera_cmd fleet history --db $(q "$out/fleet.db") --telemetry
  ITERA_AGENT_CACHE=$(q "$out/agent-cache") $(q "$bundle/itera-agent") run --prompt "JULIET:"
EOF
