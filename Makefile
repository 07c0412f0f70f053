# itera: the two set-up commands on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
export ONNXRUNTIME_NODE_INSTALL := skip
PY := /usr/bin/python3

.PHONY: setup build test test-py models demo lint format clean

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

setup: node_modules/.installed

build: setup
	npx tsc -p tsconfig.json

lint: setup
	npx biome check src test bench
	npx tsc -p tsconfig.json --noEmit

format: setup
	npx biome check --write src test bench

test: build test-py
	npx tsc -p tsconfig.json --noEmit
	mkdir -p test/.tmp
	npx vitest run --reporter=default --reporter=json --outputFile.json=test/.tmp/vitest.json
	node tools/test-summary.mjs test/.tmp/vitest.json

# Python side of the house models (tools/train): training smoke run, export, ONNX Runtime parity.
test-py: setup
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tools/train/tests

# Re-train, export and evaluate the house models from scratch (about an hour on 2 cores).
models:
	bash tools/train/run_all.sh
	bash tools/train/export_all.sh

demo: build
	bash tools/demo.sh

clean:
	rm -rf dist test/.tmp
