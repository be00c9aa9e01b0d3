# confroom: the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint setup setup-test bench

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

## Install what is needed and run the server on the embedded default app.
run: setup
	$(PY) -m confroom serve $(ARGS)

## Install what tests need, lint, type-check and run the whole test suite.
test: setup-test lint
	$(PY) -m pytest

lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

## Benchmark confroom against Janus AudioBridge (needs apt janus + sipp and
## bench/requirements.txt; uses both cores: run it on an otherwise idle machine).
## BENCH_ARGS="--n 300" (default), "--sweep", ...; see bench/RESULTS.md.
BENCH_ARGS ?= --n 300
bench:
	python3 bench/run $(BENCH_ARGS)
