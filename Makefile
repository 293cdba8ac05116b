# genrelay: every target sets up its own virtualenv, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MINUTES ?= 10

.PHONY: help demo test lint typecheck unit bench soak run clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## run 30+ jobs end to end on embedded Redis and the emulator
	$(BIN)/genrelay demo

test: lint typecheck unit  ## lint, type-check and run the whole test suite

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy --strict over the packages
	$(BIN)/mypy

unit: $(STAMP)  ## the pytest suite (real Redis, real HTTP on loopback)
	$(BIN)/pytest

bench: $(STAMP)  ## the short benchmarks in bench/, as ratios to an in-run baseline (README: Measuring)
	$(BIN)/python -m bench

soak: $(STAMP)  ## MINUTES of job stream with worker SIGKILLs and Redis restarts, then the invariants
	$(BIN)/python -m bench soak --minutes $(MINUTES)

run: $(STAMP)  ## web + worker (+ embedded Redis) in the foreground
	$(BIN)/genrelay run

clean:  ## remove the virtualenv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
