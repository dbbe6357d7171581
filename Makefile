# loyalflow — two commands on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv; nothing is installed outside the project but Python itself.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MEMBERS ?= 20000
export PREFECT_HOME ?= $(CURDIR)/var/prefect

.PHONY: demo test lint bench bench-hillstrom bench-campaign install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing loyalflow and its dependencies into $(VENV) (first time: a few minutes)..."
	@# (grep hides pip's notes about local mirrors this machine's pip config lists but lacks)
	@$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | { grep -v "is ignored" || true; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/loyalflow demo --members $(DEMO_MEMBERS)

test: $(STAMP)
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy loyalty flows recommenders channels bench

bench: $(STAMP)
	$(BIN)/python bench/import_members.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/score.py

bench-hillstrom: $(STAMP)
	$(BIN)/python bench/hillstrom.py

bench-campaign: $(STAMP)
	$(BIN)/python bench/campaign_throughput.py --members 100000 --reference 20000

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
