#!/usr/bin/env bash
# Exports and evaluates the trained house models into models/<id>/ (after run_all.sh trained them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
CK=tools/train/checkpoints
DATA=${DATA:-${ITERA_DATASETS:-data}}
one() { # checkpoint folder, model id, display name
  nice -n 5 "$PY" tools/train/export.py "$CK/$1/final.pt" "models/$2" --name "$3"
  nice -n 5 "$PY" tools/train/evaluate.py "$CK/$1/final.pt" "models/$2" --data "$DATA" > /dev/null
}
one itera-lite-tiny itera-lite-tiny "Itera-Lite tiny"
one transformer-tiny transformer-tiny "Transformer tiny (baseline)"
# models/itera-lite-micro is the better micro run on the same budget: in the committed run, the one
# trained from scratch (docs/models.md); the distilled one (checkpoint itera-lite-micro) is kept beside it.
one itera-lite-micro-scratch itera-lite-micro "Itera-Lite micro"
one itera-lite-micro itera-lite-micro-distilled "Itera-Lite micro (distilled from tiny)"
