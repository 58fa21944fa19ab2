# One command runs the default job, one runs the tests; each sets itself up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup test leaderboard clean

help:
	@echo "make test         install into .venv (if needed) and run the test suite"
	@echo "make leaderboard  install into .venv (if needed) and run the default pipeline"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache

METABENCH := MLFLOW_DISABLE_TELEMETRY=true $(BIN)/metabench
ALGORITHMS ?= protonet maml
SHOTS ?= 1 5

# The default job: embedded glyphs data, every algorithm, 5-way 1- and 5-shot, budgets from params.yaml.
leaderboard: $(STAMP)
	$(METABENCH) fetch glyphs
	set -e; for algorithm in $(ALGORITHMS); do for shots in $(SHOTS); do \
		$(METABENCH) train --algorithm $$algorithm --shots $$shots; \
		$(METABENCH) evaluate --algorithm $$algorithm --shots $$shots; \
	done; done
	$(METABENCH) summary
