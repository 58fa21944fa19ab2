# One command runs the default job, one runs the tests; each sets itself up.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup test leaderboard mlflow-ui clean

help:
	@echo "make test         install into .venv (if needed) and run the test suite"
	@echo "make leaderboard  install into .venv (if needed) and run the default pipeline (dvc repro)"
	@echo "make mlflow-ui    browse tracked runs at http://127.0.0.1:5000"

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

RUN := PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_DISABLE_TELEMETRY=true

# The default job: `dvc repro` over params.yaml (embedded glyphs data, every algorithm,
# 5-way 1- and 5-shot, 3 seeds); writes reports/leaderboard.{md,html}. Re-running skips what is cached.
leaderboard: $(STAMP)
	$(RUN) dvc repro
	@sed -n '1,/^\*acc\*/p' reports/leaderboard.md

# Browse every tracked run in the real MLflow UI at http://127.0.0.1:5000
mlflow-ui: $(STAMP)
	$(RUN) mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
