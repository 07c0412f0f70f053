#!/usr/bin/env bash
# Trains the four house models one after another (what `make models` runs), then exports them.
# Budgets: 20 min each for Itera-Lite tiny and the Transformer, 8 min each for micro scratch/distilled.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
CK=tools/train/checkpoints
DATA=${DATA:-${ITERA_DATASETS:-data}}
BIG=${BIG_SECONDS:-1200}
SMALL=${SMALL_SECONDS:-480}
run() { nice -n 5 "$PY" tools/train/train.py --data "$DATA" "$@"; }
run --model tiny --steps 100000 --max-seconds "$BIG" --out "$CK/itera-lite-tiny"
run --model transformer-tiny --steps 100000 --max-seconds "$BIG" --out "$CK/transformer-tiny"
run --model micro --steps 100000 --max-seconds "$SMALL" --out "$CK/itera-lite-micro-scratch"
run --model micro --steps 100000 --max-seconds "$SMALL" --out "$CK/itera-lite-micro" \
  --teacher "$CK/itera-lite-tiny/final.pt"
