# One command each: `make demo` (set up + run the demo), `make test` (set up + fast tests),
# `make test-all` (set up + every test, slow statistical checks included).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench clean

$(BIN)/imgcate: pyproject.toml setup.py imgcate/_rcf.cpp
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

# Two pytest processes: one process running every test crashed once inside XLA compilation
# (segfault) after hundreds of compilations; each half passes on its own.
test-all: setup
	$(BIN)/ruff check imgcate tests benchmarks
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m slow -rP

lint: setup
	$(BIN)/ruff check imgcate tests benchmarks

clean:
	rm -rf demo-output .pytest_cache
