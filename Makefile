# The two commands a new user needs: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
PLUGIN_ARGS := $(foreach dir,$(PLUGIN_DIRS),-e ./$(dir))

.PHONY: run test lint fix bench clean system-deps

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "frameiod needs Python 3.11 or newer; set PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps: reinstall only when a pyproject.toml changed.
$(VENV)/.run-installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e . $(PLUGIN_ARGS)
	@touch $@

$(VENV)/.test-installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,redis]' $(PLUGIN_ARGS)
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/frameiod run --config $(CONFIG)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The systemd unit is checked with systemd-analyze (Debian's systemd package); the Redis
# backend's tests start their own redis-server (Debian's redis-server package).
system-deps:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: lint system-deps
	$(BIN)/pytest -n auto --dist loadfile

# Load tests need wrk (and taskset, from util-linux, to pin server and load to separate cores).
bench: $(VENV)/.run-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@$(BIN)/python -c 'import redis' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[redis]'
	$(BIN)/python bench/run.py

fix: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
