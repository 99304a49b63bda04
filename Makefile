# Two commands: `make run` and `make test`. Both create .venv when it is missing and install bench.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.bench-installed
SUITE   ?= suites/quickstart.yaml
PYTEST_ARGS ?=

.PHONY: install run test test-slow clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision first, pinned to the CPU-usable builds this machine's pip serves locally
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/bench run $(SUITE)

test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(VENV)/bin/python -m pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf results mlflow.db mlartifacts .bench-store
