# Two targets a newcomer needs; each sets up its own virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint bench

$(BIN)/.fedmammo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.fedmammo-installed  ## 3 synthetic hospitals, DP federation, report
	$(BIN)/fedmammo simulate $(ARGS)

test: $(BIN)/.fedmammo-installed  ## the whole test suite (CI runs exactly this)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/.fedmammo-installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(BIN)/.fedmammo-installed
	$(BIN)/python -m simulations.benchmarks.round_overhead $(ARGS)
