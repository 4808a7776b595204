# lmforge: two commands do all the set-up on a fresh machine.
#   make demo   -> creates .venv if missing (CPU torch pinned), installs lmforge, materializes pipelines/tiny_r1.yaml
#   make test   -> same set-up, then lint + the whole test suite
#   make ui     -> Dagster UI on http://127.0.0.1:3000 over the same instance the demo wrote to
#   make bench  -> benchmark figures as JSON + Markdown under bench/results/
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LMFORGE_HOME ?= $(HOME)/.lmforge
export LMFORGE_HOME
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PORT ?= 3000

.PHONY: setup demo test test-fast ui bench lint clean-home chromium postgresql

# The venv is (re)built when pyproject.toml changes. torch is pinned to the CPU build first so that the
# unpinned `torch>=` requirement never pulls a multi-GB CUDA build; GPU users install their own torch.
$(VENV)/.ready: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(VENV)/.ready

demo: setup
	$(VENV)/bin/lmforge materialize pipelines/tiny_r1.yaml

# The browser test drives Debian's Chromium (never a downloaded browser build).
chromium:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

# The scale-out tests start a throwaway PostgreSQL cluster (initdb in a temp dir) from Debian's binaries.
postgresql:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } \
	  || { (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1 \
	  || echo "warning: could not install postgresql; the Postgres instance tests will be skipped"; }

lint: setup
	$(PY) -m ruff check .

test: setup chromium postgresql lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not e2e"

ui: setup
	$(VENV)/bin/lmforge ui --port $(PORT)

bench: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(PY) -m bench.run

clean-home:
	rm -rf $(LMFORGE_HOME)
