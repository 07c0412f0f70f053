# itera: the two set-up commands on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
export ONNXRUNTIME_NODE_INSTALL := skip
PY := /usr/bin/python3

.PHONY: setup build test demo lint format clean

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

test: build
	npx tsc -p tsconfig.json --noEmit
	mkdir -p test/.tmp
	npx vitest run --reporter=default --reporter=json --outputFile.json=test/.tmp/vitest.json
	node tools/test-summary.mjs test/.tmp/vitest.json

demo: build
	bash tools/demo.sh

clean:
	rm -rf dist test/.tmp
