# One command each: `make demo` (set up + run the demo), `make test` (set up + lint + format
# check + fast tests), `make test-all` (the same + the slow statistical checks), `make bench`
# (every benchmark, each printing JSON; `make bench BENCH_ARGS=--quick` for a smoke run),
# `make docs` (the documentation site in site/, built with --strict: a broken link or a missing
# page fails; the notebooks are executed, `make docs DOCS_SMALL=1` with small settings,
# `DOCS_EXECUTE=false` renders them without running), `make test-floors` (the fast suite on the
# oldest dependency versions, .ci/floors.txt), `make clean` (what the others made, the virtual
# environment excepted).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# every optional extra, so that every path is tested
EXTRAS ?= test,all
SOURCES := imgcate tests benchmarks examples data setup.py .ci
BENCHMARKS ?= $(sort $(wildcard benchmarks/*.py))
BENCH_ARGS ?=
DOCS_EXECUTE ?= true
DOCS_SMALL ?= 0

.PHONY: setup demo test test-all test-floors lint format bench docs clean

# A stamp, not the venv's files: `make clean` removes it with the compiled kernel, so the next
# setup builds the kernel again.
$(VENV)/.installed: pyproject.toml setup.py imgcate/encoders/_rcf.cpp
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/imgcate demo demo-output --overwrite

lint: setup
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

format: setup
	$(BIN)/ruff format $(SOURCES)

# The fast suite in four pytest processes, TEST_JOBS at a time (.ci/pytest_parts.py): one
# process compiling every test's models crashed inside XLA (segfault) once the suite grew, and
# two at once use both cores of a 2-core machine. The longest parts come first. Each part
# lists its slowest tests (--durations), to see what makes the suite long.
TEST_JOBS ?= 2
FAST_PARTS = "$(filter-out tests/test_examples.py,$(sort $(wildcard tests/test_[a-l]*.py)))" \
	"tests/test_examples.py" "$(sort $(wildcard tests/test_[m-z]*.py))" \
	"$(sort $(wildcard tests/*/))"
test: lint
	$(BIN)/python .ci/pytest_parts.py --jobs $(TEST_JOBS) $(FAST_PARTS) -- --durations=12

# The slow checks one pytest process per test file: a process running many of them crashed
# inside XLA compilation (segfault) after hundreds of compilations, twice; each file passes on
# its own.
SLOW_FILES = $(shell grep -rl "mark.slow" tests | sort)
test-all: lint
	$(BIN)/python .ci/pytest_parts.py --jobs $(TEST_JOBS) $(FAST_PARTS)
	for f in $(SLOW_FILES); do $(BIN)/pytest -q -m slow -rP $$f || exit 1; done

# benchmarks/peers.py compares with econml's CausalForestDML (the `bench` extra)
$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),bench]"
	touch $@

bench: $(VENV)/.bench
	@set -e; for script in $(BENCHMARKS); do \
		echo "# $$script $(BENCH_ARGS)" >&2; \
		$(BIN)/python $$script $(BENCH_ARGS); \
	done

# the documentation site: MkDocs (Material), mkdocstrings, mkdocs-jupyter (the `docs` extra)
$(VENV)/.docs: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),docs]"
	touch $@

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 IMGCATE_DOCS_EXECUTE=$(DOCS_EXECUTE) IMGCATE_EXAMPLE_SMALL=$(DOCS_SMALL) \
		MPLBACKEND=Agg $(BIN)/mkdocs build --strict --site-dir site

# The fast suite on the dependency floors (.ci/floors.txt, pinned), in their own environment.
FLOORS_VENV ?= .venv-floors
test-floors:
	test -x $(FLOORS_VENV)/bin/python || $(PY) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install --quiet --upgrade pip
	$(FLOORS_VENV)/bin/pip install --quiet -r .ci/floors.txt
	$(FLOORS_VENV)/bin/pip install --quiet --no-deps -e .
	$(FLOORS_VENV)/bin/pytest -q

clean:
	rm -rf demo-output build dist site .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -f imgcate/encoders/_rcf.*.so imgcate/encoders/_rcf.*.pyd
	rm -f $(VENV)/.installed $(VENV)/.bench $(VENV)/.docs
