# confroom: the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint setup setup-test setup-bench bench vendor-js

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

setup-bench:
	@scripts/setup.sh --bench

## Install what is needed and run the server on the embedded default app.
run: setup
	$(PY) -m confroom serve $(ARGS)

## Install what tests need, lint, type-check and run the whole test suite.
test: setup-test lint
	$(PY) -m pytest

lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

## Benchmark confroom against Janus AudioBridge (installs apt janus + sipp and
## bench/requirements.txt into the venv; uses both cores: run it on an otherwise idle machine).
## BENCH_ARGS="--n 300" (default), "--sweep", ...; see bench/RESULTS.md.
BENCH_ARGS ?= --n 300
bench: setup-bench
	$(PY) bench/run $(BENCH_ARGS)

## Rebuild the vendored JsSIP bundle of the web phone from web/package-lock.json (pinned; the
## result is committed under src/confroom/web/static/, nothing is fetched at run time), and the
## SIP.js client of the browser e2e test (web/sipjs-e2e.js -> tests/e2e/web/, committed too).
vendor-js:
	cd web && npm ci --no-audit --no-fund && ./node_modules/.bin/esbuild node_modules/jssip/lib/JsSIP.js \
	  --bundle --format=iife --global-name=JsSIP --minify --platform=browser --legal-comments=inline \
	  --outfile=../src/confroom/web/static/jssip-3.13.8.min.js
	cp web/node_modules/jssip/LICENSE.md src/confroom/web/static/jssip-LICENSE.md
	cd web && ./node_modules/.bin/esbuild sipjs-e2e.js --bundle --format=iife --minify \
	  --platform=browser --legal-comments=inline --outfile=../tests/e2e/web/sipjs-e2e.bundle.js
	cp web/node_modules/sip.js/LICENSE.md tests/e2e/web/sipjs-LICENSE.md
