# The two commands of the README:
#   make run    set up .venv and train on InvertedPendulum-v5 with the defaults, the tuned run (embedded local Ray)
#   make test   set up .venv with test dependencies and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch==2.13.0 first: on machines with a local CPU wheel this takes it instead of a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed
# setup-test also installs the prometheus binary (tests/system/test_prometheus.py) where it is missing and apt-get
# can; where it cannot, setup goes on and that test is skipped.
setup-test: $(VENV)/.installed-test
	@command -v prometheus >/dev/null || ! command -v apt-get >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }; } || echo "setup-test: could not install prometheus (apt-get); tests/system/test_prometheus.py will be skipped" >&2

run: setup
	$(BIN)/dynaray train $(ARGS)

# Tests that start Ray need a loopback-only network namespace (Ray otherwise binds the machine's address):
# tests/run.sh enters one when it can and runs pytest there.
test: setup-test
	bash tests/run.sh

clean:
	rm -rf $(VENV) *.egg-info
