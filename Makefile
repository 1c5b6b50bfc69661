# Goophry on Twisted: developer entry points.
#
#   make venv    create .venv (if absent) and install requirements + the project
#   make run     run the example daemon in the foreground (examples/run-demo.sh)
#   make lint    ruff (lint + format check) and mypy --strict on the package
#   make test    lint, then the whole test suite in parallel
#   make bench   the benchmark (bench/); ORIGINAL=path adds the Go original beside ours
#   make screenshots  the dashboard screenshots in docs/screenshots/ (headless Chromium)
#   make clean   remove caches and build output (keeps .venv and the built C
#                extension, which `make venv` rebuilds when its source changes;
#                `make distclean` removes both)

SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.goophry-installed
# One xdist worker per core (each starts its own redis-server); override with
# e.g. `make test PYTEST_ARGS="-n 4 -x"`.
PYTEST_ARGS ?= -n auto -q
# Only the directories that exist (bench/ may not be written yet).
LINT_PATHS := $(wildcard goophry_tx tests bench)

.PHONY: venv run lint test check-redis bench screenshots clean distclean

venv: $(STAMP)

# Re-runs when requirements.txt, pyproject.toml or the build of the C
# extension (setup.py, goophry_tx/process/_cspawn.c) is newer than the stamp:
# pip then rebuilds the extension in place.
# editable_mode=compat puts the checkout itself on sys.path (a .pth line),
# which is what lets twistd find twisted/plugins/goophry_plugin.py from here;
# the default editable mode installs an import hook that Twisted's plugin
# search does not see.
$(STAMP): requirements.txt pyproject.toml setup.py goophry_tx/process/_cspawn.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install -e . --config-settings editable_mode=compat
	touch $@

run: venv
	VENV=$(VENV) examples/run-demo.sh

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy goophry_tx

test: lint check-redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests and the benchmark start their own redis-server processes.
check-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	    echo "redis-server is not installed: sudo apt-get install redis-server" \
	         "(bash .ci/run installs it itself)" >&2; exit 1; }

# The dashboard's screenshots that README.rst shows (the browser tests save
# them to build/screenshots/ on every run).
screenshots: venv check-redis
	GOOPHRY_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -n 0 -m browser \
	    tests/browser/test_dashboard.py::test_screenshots_of_every_page

# The cost figure goes where README.rst shows it.
bench: venv check-redis
	$(BIN)/python -m bench --plot-to docs/bench-cost.png $(if $(ORIGINAL),--original $(ORIGINAL))

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache _trial_temp .demo
	rm -f twisted/plugins/dropin.cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
	rm -f goophry_tx/process/*.so
