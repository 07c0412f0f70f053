#!/usr/bin/env bash
# `make demo`: the most complete end-to-end job that exists, on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
itera() { node dist/cli/itera.js "$@"; }

echo "== device profiles"
itera profiles
