# Two commands do all the set-up on a fresh machine:
#   make run    creates/reuses .venv, installs, runs the main job on the embedded SQLite database
#               and records it in the Dagster instance at .dagster_home (what `make dev` shows)
#   make test   creates/reuses .venv, installs with test extras, makes sure Postgres is up and the
#               system Chromium (the dashboard's browser test) and docker-compose (the deployment
#               test) are installed, lints (ruff), type-checks (mypy), runs the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2
# The Dagster instance `make run` records its runs in and `make dev` serves; an absolute path,
# as Dagster requires. Set DAGSTER_HOME in the environment to use another one.
DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: run dev test lint typecheck postgres rabbitmq chromium docker-compose dashboard screenshots dataset evaluate evaluate-nab evaluate-sample clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamps record what was installed; editing pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

# The instance configuration is the repository's dagster.yaml (run storage, the one-scoring-run
# limit); it is copied again when that file changes.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

run: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/kpi-pipeline init
	$(BIN)/kpi-pipeline ingest dataset/kpi_data.csv
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/kpi-pipeline run
	$(BIN)/kpi-pipeline anomalies --limit 40

# The Dagster UI and daemon (schedules, sensors) on http://127.0.0.1:3000, on the instance
# `make run` records in. It starts in DAGSTER_HOME because `dagster dev` warns about (and
# ignores) a dagster.yaml in its working directory, and the repository's root holds one.
dev: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && DAGSTER_HOME=$(DAGSTER_HOME) $(CURDIR)/$(BIN)/dagster dev -w $(CURDIR)/workspace.yaml

postgres:
	bash scripts/ensure-postgres.sh

# The broker of the celery test (two dagster-celery workers); never fails (that test then skips,
# saying why).
rabbitmq:
	bash scripts/ensure-rabbitmq.sh

# Debian's chromium for the dashboard's browser test; never fails (the test then skips, saying why).
chromium:
	bash scripts/ensure-chromium.sh

# Debian's docker-compose for the deployment test's `docker-compose config`; never fails (that
# test then skips, saying why).
docker-compose:
	bash scripts/ensure-docker-compose.sh

# Lint and the format check (ruff; [tool.ruff] in pyproject.toml). `ruff format kpi_pipeline
# kpi_pipeline_tests` formats.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check kpi_pipeline kpi_pipeline_tests
	$(BIN)/ruff format --check kpi_pipeline kpi_pipeline_tests

# Types of the pure library and the store (see [tool.mypy] in pyproject.toml).
typecheck: $(VENV)/.installed-test
	$(BIN)/mypy kpi_pipeline/detection kpi_pipeline/store

test: $(VENV)/.installed-test postgres rabbitmq chromium docker-compose lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

dashboard: $(VENV)/.installed
	$(BIN)/kpi-pipeline dashboard

# Regenerates docs/screenshots/{overview,kpi}.png from a freshly seeded database.
screenshots: $(VENV)/.installed-test chromium
	$(BIN)/python -m kpi_pipeline_tests.dashboard.screenshots --out docs/screenshots

dataset: $(VENV)/.installed
	$(BIN)/python -m kpi_pipeline.datagen --out dataset --seed 42

evaluate-nab: $(VENV)/.installed
	$(BIN)/kpi-pipeline evaluate --data ../shared/bench/nab-dev/data --windows ../shared/bench/nab-dev/windows.json --out out/nab-dev

evaluate-sample: $(VENV)/.installed
	$(BIN)/kpi-pipeline evaluate --data dataset/kpi_data.csv --labels dataset/kpi_labels.csv --out out/sample

# The fold report: every NAB dev category and every labelled dataset, one table (out/folds/folds.md).
# BASELINE=path/to/folds.json shows each figure's change against an earlier report.
evaluate: $(VENV)/.installed
	$(BIN)/kpi-pipeline evaluate --out out/folds $(if $(BASELINE),--baseline $(BASELINE)) \
	  --data nab=../shared/bench/nab-dev/data --data sample=dataset/kpi_data.csv \
	  --data daily=dataset/daily/kpi_data.csv --data five_minute=dataset/five_minute/kpi_data.csv \
	  --data minute=dataset/minute/kpi_data.csv

clean:
	rm -rf .kpi out .pytest_cache .mypy_cache artifacts
