# One command each: `make demo` (set up + run the demo), `make test` (set up + fast tests),
# `make test-all` (set up + every test, slow statistical checks included).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench clean

$(BIN)/imgcate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/imgcate

setup: $(BIN)/imgcate

demo: setup
	$(BIN)/imgcate demo demo-output --overwrite

test: setup
	$(BIN)/ruff check imgcate tests benchmarks
	$(BIN)/pytest -q

test-all: setup
	$(BIN)/ruff check imgcate tests benchmarks
	$(BIN)/pytest -q -m "slow or not slow"

lint: setup
	$(BIN)/ruff check imgcate tests benchmarks

clean:
	rm -rf demo-output .pytest_cache
