# One-line targets; CI calls the same ones (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install up test test-unit lint format

$(BIN)/.installed: requirements.txt requirements-web.txt requirements-onnx.txt requirements-torch.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt && touch $@

install: $(BIN)/.installed

up:
	scripts/up.sh

test: install
	$(BIN)/python -m pytest

# The fast lane: no training, no other process, no browser (CI still runs everything), one
# pytest-xdist worker per core (tests/pytest_env.py gives each its own folders and queue).
test-unit: install
	$(BIN)/python -m pytest -q -n auto -m "not e2e and not browser and not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .
