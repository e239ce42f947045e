# The two commands a new user needs: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
PLUGIN_ARGS := $(foreach dir,$(PLUGIN_DIRS),-e ./$(dir))
# Each plugin folder is named after its distribution.
PACKAGES := frameiod $(notdir $(PLUGIN_DIRS))
TEST_EXTRAS := '.[test,redis,docs]'
# Where `make dist` writes the wheels and sdists.
DIST ?= dist

.PHONY: run test test-lowest test-newest test-pythons lint fix bench clean system-deps dist \
	docs docs-reference

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "frameiod needs Python 3.11 or newer; set PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps: reinstall only when a pyproject.toml changed, or when one of the packages is no
# longer installed (`frameiod uninstall frameiod-event-log`): a stamp cannot see that, so
# ENSURE_INSTALLED asks the venv, one interpreter start, before each run.
ENSURE_INSTALLED = @$(BIN)/python -c 'import sys, importlib.metadata as m; \
	[m.distribution(name) for name in sys.argv[1:]]' $(PACKAGES) 2>/dev/null \
	|| { echo "make: reinstalling $(PACKAGES) into $(VENV)"; \
		$(BIN)/python -m pip install --quiet -e $(1) $(PLUGIN_ARGS); }

$(VENV)/.run-installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e . $(PLUGIN_ARGS)
	@touch $@

$(VENV)/.test-installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e $(TEST_EXTRAS) $(PLUGIN_ARGS)
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(call ENSURE_INSTALLED,.)
	$(BIN)/frameiod run --config $(CONFIG)

lint: $(VENV)/.test-installed
	$(call ENSURE_INSTALLED,$(TEST_EXTRAS))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The systemd unit is checked with systemd-analyze (Debian's systemd package); the Redis
# backend's tests start their own redis-server (Debian's redis-server package); the
# console's browser test drives Debian's chromium through chromium-driver.
system-deps:
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The documentation site, built from scratch (-E: a page that warned last time warns again)
# with every warning an error: a broken reference or a page missing from a toctree fails.
# $(1) is the venv's bin folder.
SPHINX_BUILD = $(1)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

test: lint system-deps
	$(call SPHINX_BUILD,$(BIN))
	$(BIN)/pytest -n auto --dist loadfile

# Build the site and serve it on http://127.0.0.1:$(DOCS_PORT)/ (Ctrl-C stops it).
DOCS_PORT ?= 8000
docs: $(VENV)/.test-installed
	$(call SPHINX_BUILD,$(BIN))
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory docs/_build/html $(DOCS_PORT)

# The generated reference pages (tests/test_docs_reference.py fails while they differ).
docs-reference: $(VENV)/.run-installed
	$(BIN)/python -m frameiod.reference config > docs/reference/config.md
	$(BIN)/python -m frameiod.reference cli > docs/reference/cli.md

# The other environments CI proves, each a venv of its own installed by uv (pip cannot
# resolve to the lowest versions allowed). pyenv's interpreters are looked for first.
PYENV_ROOT ?= $(HOME)/.pyenv
# A shell snippet setting $$python to the interpreter of Python $$version, or to nothing.
FIND_PYTHON = python="$$(ls $(PYENV_ROOT)/versions/$$version.*/bin/python$$version 2>/dev/null \
	| head -n 1)"; python="$${python:-$$(command -v python$$version)}"
UV := $(VENV)/bin/uv
LOWEST_PYTHON := 3.11
# Every Python that requires-python claims, beside the one `make test` runs on.
EXTRA_PYTHONS := 3.12 3.13

$(UV): $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet uv
	@touch $@

# Every lower bound in pyproject.toml (frameiod's and the example plugins') holds: the suite
# on the lowest versions they allow, on the lowest Python they allow.
test-lowest: $(UV) system-deps
	@version=$(LOWEST_PYTHON); $(FIND_PYTHON); \
	[ -n "$$python" ] || { echo "test-lowest: no python$(LOWEST_PYTHON) on this machine"; exit 1; }; \
	rm -rf $(VENV)-lowest && $(UV) venv --quiet --python "$$python" $(VENV)-lowest \
	&& $(UV) pip install --quiet --python $(VENV)-lowest/bin/python --resolution lowest-direct \
		-e $(TEST_EXTRAS) $(PLUGIN_ARGS) \
	&& $(UV) pip list --python $(VENV)-lowest/bin/python \
	&& $(call SPHINX_BUILD,$(VENV)-lowest/bin) \
	&& $(VENV)-lowest/bin/pytest -n auto --dist loadfile

# The libraries frameiod leans on hardest (aiohttp's request handler in
# frameiod/http/aiohttp_hooks.py, structlog, pluggy, prometheus-client) at their newest releases,
# their upper pins overridden: a release that breaks frameiod is seen the day it ships.
NEWEST := aiohttp structlog pluggy prometheus-client

test-newest: $(UV) system-deps
	rm -rf $(VENV)-newest && $(UV) venv --quiet --python $(BIN)/python $(VENV)-newest \
	&& printf '%s\n' $(NEWEST) > $(VENV)-newest/overrides.txt \
	&& $(UV) pip install --quiet --python $(VENV)-newest/bin/python \
		--override $(VENV)-newest/overrides.txt -e $(TEST_EXTRAS) $(PLUGIN_ARGS) \
	&& $(UV) pip list --python $(VENV)-newest/bin/python \
	&& $(call SPHINX_BUILD,$(VENV)-newest/bin) \
	&& $(VENV)-newest/bin/pytest -n auto --dist loadfile

# The suite on each of EXTRA_PYTHONS with the newest dependencies; one missing from this
# machine is skipped with a line saying so.
test-pythons: $(UV) system-deps
	@status=0; for version in $(EXTRA_PYTHONS); do \
		$(FIND_PYTHON); \
		if [ -z "$$python" ]; then echo "test-pythons: skipped Python $$version (not installed)"; continue; fi; \
		echo "test-pythons: Python $$version ($$python)"; \
		rm -rf $(VENV)-$$version && $(UV) venv --quiet --python "$$python" $(VENV)-$$version \
		&& $(UV) pip install --quiet --python $(VENV)-$$version/bin/python \
			-e $(TEST_EXTRAS) $(PLUGIN_ARGS) \
		&& $(call SPHINX_BUILD,$(VENV)-$$version/bin) \
		&& $(VENV)-$$version/bin/pytest -n auto --dist loadfile || status=1; \
	done; exit $$status

# Load tests need wrk (and taskset, from util-linux, to pin server and load to separate cores).
bench: $(VENV)/.run-installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@$(BIN)/python -c 'import redis' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[redis]'
	$(BIN)/python bench/run.py
	@# The otel plugin's cost: the same loads without and with it (docs/performance.md).
	$(BIN)/python bench/otel.py

# The build front end, and the build back end installed beside it so each package is built
# in this venv instead of a fresh isolated one per package (a few times faster).
$(VENV)/.dist-tools: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'build>=1.2,<2' 'setuptools>=77' 'wheel>=0.43'
	@touch $@

# A wheel and an sdist of frameiod and of each plugin under plugins/, into $(DIST); the
# wheel is built from the sdist, so an sdist missing a file fails here. A stale .egg-info
# (left by earlier builds) would add the files it lists to the sdist: it goes first.
dist: $(VENV)/.dist-tools
	@mkdir -p $(DIST) && rm -f $(DIST)/*.whl $(DIST)/*.tar.gz
	@for dir in . $(PLUGIN_DIRS); do \
		rm -rf $$dir/*.egg-info; \
		$(BIN)/python -m build --quiet --no-isolation --outdir $(DIST) $$dir || exit 1; \
	done
	@ls -1 $(DIST)

fix: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DIST) $(VENV) $(VENV)-lowest $(VENV)-newest $(foreach v,$(EXTRA_PYTHONS),$(VENV)-$(v)) \
		.pytest_cache .ruff_cache .hypothesis docs/_build
