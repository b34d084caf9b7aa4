# keras-ctr-compress: every target installs what it needs into a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PYTEST_ARGS ?=
SEEDS  ?= 0,1,2
# Every registered method that runs on DeepFM (kcc bench --list shows them all).
BENCH_METHODS ?= fp32,drq,keras-int8,keras-int4,hashing,qr

# tensorflow-io 0.37.1 (its last release) is built for TF 2.16 and does not load on the
# default TF 2.21: its lane gets its own venv, pins in ONE pip command (shared/litert.md).
TFIO_VENV  := .venv-tfio
TFIO_STAMP := $(TFIO_VENV)/.installed-tfio
TFIO_PINS  := "tensorflow-cpu==2.16.2" "tensorflow-io==0.37.1" "numpy<2" "pyarrow<26" "pandas<3" "pytest>=8"

.PHONY: venv demo test tfio-venv test-tfio bench parity-sweep lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The tfmot-prune peer's own environment: TFMOT needs tf_keras (Keras 2), which pulls
# the full tensorflow wheel; kept out of .venv so the library never sees Keras 2.
TFMOT_VENV  := .venv-tfmot
TFMOT_STAMP := $(TFMOT_VENV)/.installed
$(TFMOT_STAMP):
	@test -x $(TFMOT_VENV)/bin/python || $(PYTHON) -m venv $(TFMOT_VENV)
	$(TFMOT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TFMOT_VENV)/bin/python -m pip install --quiet 'tensorflow-cpu==2.21.*' 'tf-keras==2.21.*' \
		'tensorflow-model-optimization>=0.8.1' numpy
	@touch $(TFMOT_STAMP)
export KCC_TFMOT_PYTHON := $(CURDIR)/$(TFMOT_VENV)/bin/python

demo: $(STAMP)
	$(BIN)/kcc demo --out runs/demo

test: $(STAMP) $(TFMOT_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist load $(PYTEST_ARGS)

$(TFIO_STAMP):
	@test -x $(TFIO_VENV)/bin/python || $(PYTHON) -m venv $(TFIO_VENV)
	$(TFIO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TFIO_VENV)/bin/python -m pip install --quiet $(TFIO_PINS)
	@touch $(TFIO_STAMP)

tfio-venv: $(TFIO_STAMP)

# The tensorflow-io path (Parquet, CSV, Arrow through its native ops) on small files;
# the data package needs only numpy + pyarrow there, so the lane imports the checkout.
test-tfio: $(TFIO_STAMP)
	KCC_EXPECT_TFIO=1 PYTHONPATH=$(CURDIR) $(TFIO_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_tfio.py

# The full benchmark (about 30 min per dataset-seed set on 2 cores); records and the
# rendered tables go to benchmarks/results/, the headline block to README.md.
bench: $(STAMP) $(TFMOT_STAMP)
	$(BIN)/kcc bench --dataset frappe --model deepfm --methods $(BENCH_METHODS) --seeds $(SEEDS) \
		--epochs 20 --json benchmarks/results/frappe_deepfm.json
	$(BIN)/kcc bench --dataset criteo-8k --model deepfm --methods $(BENCH_METHODS) --seeds 0 \
		--json benchmarks/results/criteo-8k_deepfm.json
	$(BIN)/kcc bench --dataset movielens100k --model deepfm --methods $(BENCH_METHODS) --seeds 0 \
		--json benchmarks/results/movielens100k_deepfm.json
	$(BIN)/kcc report --results benchmarks/results --readme README.md

# Parity sweep: PARITY_PLANS random valid plans over FM / FwFM / DeepFM / DeepFwFM, each
# exported builtins-only and checked against Keras in LiteRT (CI runs 8 of them in
# tests/test_parity_sweep.py); the record goes to benchmarks/results/parity_sweep.json.
PARITY_PLANS ?= 60
parity-sweep: $(STAMP)
	KCC_PARITY_PLANS=$(PARITY_PLANS) KCC_PARITY_RECORD=benchmarks/results/parity_sweep.json \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_parity_sweep.py

lint: $(STAMP)
	$(BIN)/ruff check keras_ctr_compress tests

clean:
	rm -rf $(VENV) runs .pytest_cache
