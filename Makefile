# Two commands: `make run` and `make test`. Both create .venv when it is missing and install bench.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.bench-installed
TEST_STAMP := $(VENV)/.bench-test-installed
SUITE   ?= suites/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: install install-test run test test-slow acceptance clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision first, pinned to the builds this machine's pip serves locally. `make run` installs
# only what the main job needs; `make test` adds the test extras (pytest, Ray, diffusers, psycopg2) on top,
# each step with its own stamp, so `make run` then `make test` works and so does `make test` alone.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test]"
	@touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

run: install
	$(VENV)/bin/bench run $(SUITE)

test: install-test
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: install-test
	$(VENV)/bin/python -m pytest -q -m 'slow and not acceptance' $(PYTEST_ARGS)

# full-size reproductions (the whole oracle suite, 20,000 fuzzed suites, ...): tens of minutes, not in CI
acceptance: install-test
	$(VENV)/bin/python -m pytest -q -m acceptance $(PYTEST_ARGS)

clean:
	rm -rf results mlflow.db mlartifacts .bench-store
