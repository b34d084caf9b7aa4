# keras-ctr-compress: every target installs what it needs into a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=

.PHONY: venv demo test bench bench-quick lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kcc demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist load $(PYTEST_ARGS)

# The full benchmark on frappe (about an hour on 2 cores); records go to benchmarks/results/.
bench: $(STAMP)
	$(BIN)/kcc bench --dataset frappe --model deepfm --methods fp32,drq --seeds 0,1,2 \
		--json benchmarks/results/frappe_deepfm.json

lint: $(STAMP)
	$(BIN)/ruff check keras_ctr_compress tests

clean:
	rm -rf $(VENV) runs .pytest_cache
