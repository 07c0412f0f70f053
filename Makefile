# itera: the two set-up commands on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
export ONNXRUNTIME_NODE_INSTALL := skip
PY := /usr/bin/python3

.PHONY: setup build test test-py models finetune demo lint format clean

node_modules/.installed: package.json package-lock.json
	NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund
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

# Fine-tune a model folder on exported fleet feedback (docs/models.md, "Fine-tuning on feedback"):
#   make finetune FEEDBACK=feedback.jsonl BASE=models/itera-lite-micro [OUT=models/itera-lite-micro-ft] [ARGS="--steps 200"]
finetune:
	@test -n "$(FEEDBACK)" -a -n "$(BASE)" || { echo "usage: make finetune FEEDBACK=file.jsonl BASE=models/<folder> [OUT=dir] [ARGS=...]" >&2; exit 2; }
	OPENBLAS_NUM_THREADS=1 $(PY) tools/train/finetune.py --feedback $(FEEDBACK) --base $(BASE) $(if $(OUT),--out $(OUT)) $(ARGS)

# Re-train, export and evaluate the house models from scratch (about an hour on 2 cores).
models:
	bash tools/train/run_all.sh
	bash tools/train/export_all.sh

demo: build
	bash tools/demo.sh

clean:
	rm -rf dist test/.tmp
