# keras-ctr-compress: every target installs what it needs into a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PYTEST_ARGS ?=
SEEDS  ?= 0,1,2

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

# The full benchmark suite (hours on 2 cores): every method of every issue and every
# peer on frappe (3 seeds; DeepFM, and DeepFwFM for the pruning methods whose base it
# is), criteo-8k and movielens100k once each, the training-memory record, the scale
# sweep to 1e7 rows with the plan a search finds on a 26-field synthetic model, then
# the rendered tables and plots (benchmarks/results/README.md, README.md's headline).
R       := benchmarks/results
QUANT   := qat-8,qat-4,qat-2,lpt-dr-8,lpt-dr-4,lpt-dr-2,lpt-sr-8,lpt-sr-4,lpt-sr-2,alpt-8,alpt-4,alpt-2,rowwise
PEERS   := drq,keras-int8,keras-int4,hashing,qr
LOWRANK := fm-part,fp32-ft,afm-d4,afm-d4-ft,svd-d4,svd-d4-ft,afm-d16,afm-d16-ft,svd-d16,svd-d16-ft,afm-d32-e6,afm-d32-e6-ft,svd-d32-e6,svd-d32-e6-ft,afm-d16-e4,afm-d16-e4-ft,svd-d16-e4,svd-d16-e4-ft
PRUNING := drq,fm-part,deeplight,deeplight-structured,shark-fields,shark-fields-permutation,shark-fields-norm,shark-fields-random,tfmot-prune
SEARCH  := searched,searched-random
EPOCHS  ?= 40
BENCH    = $(BIN)/kcc bench --epochs $(EPOCHS)
SCALE_MODEL_DATA := synthetic:rows=200000,fields=26,numeric=0,noise_fields=4,total_vocab=100000,seed=0
bench: $(STAMP) $(TFMOT_STAMP)
	$(BENCH) --dataset frappe --model deepfm --methods fp32,$(PEERS),$(QUANT) --seeds $(SEEDS) --json $(R)/frappe_deepfm_quant.json
	$(BENCH) --dataset frappe --model deepfm --methods fp32,drq,$(LOWRANK) --seeds $(SEEDS) --json $(R)/frappe_deepfm_lowrank.json
	$(BENCH) --dataset frappe --model deepfwfm --methods fp32,$(PRUNING) --seeds $(SEEDS) --json $(R)/frappe_deepfwfm_pruning.json
	$(BENCH) --dataset frappe --model deepfm --methods fp32,drq,$(SEARCH) --budget-ratio 16 --trials 20 --seeds $(SEEDS) --json $(R)/frappe_deepfm_search.json
	for d in criteo-8k movielens100k; do \
	  $(BENCH) --dataset $$d --model deepfm --methods fp32,$(PEERS),$(QUANT),$(LOWRANK),$(SEARCH) --seeds 0 --json $(R)/$${d}_deepfm.json && \
	  $(BENCH) --dataset $$d --model deepfwfm --methods fp32,$(PRUNING) --seeds 0 --json $(R)/$${d}_deepfwfm_pruning.json || exit 1; \
	done
	$(BIN)/kcc memory --rows 10000000 --dim 16 --json $(R)/memory_lpt_10m.json
	$(BIN)/kcc train --data $(SCALE_MODEL_DATA) --embedding-dim 16 --epochs 5 --out runs/scale/model
	$(BIN)/kcc search --model runs/scale/model --max-ratio 16 --trials 10 --out runs/scale/search
	$(BIN)/kcc scale --plan runs/scale/search/best_plan.json --workdir runs/scale/files --json $(R)/scale_sweep.json
	$(BIN)/kcc report --results $(R) --readme README.md

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
