# Two commands do all the set-up on a fresh machine:
#   make run    creates/reuses .venv, installs, runs the main job on the embedded SQLite database
#   make test   creates/reuses .venv, installs with test extras, makes sure Postgres is up and the
#               system Chromium (the dashboard's browser test) and docker-compose (the deployment
#               test) are installed, runs the suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -n 2

.PHONY: run test postgres chromium docker-compose dashboard screenshots dataset evaluate-nab evaluate-sample clean

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

run: $(VENV)/.installed
	$(BIN)/kpi-pipeline init
	$(BIN)/kpi-pipeline ingest dataset/kpi_data.csv
	$(BIN)/kpi-pipeline run
	$(BIN)/kpi-pipeline anomalies --limit 40

postgres:
	bash scripts/ensure-postgres.sh

# Debian's chromium for the dashboard's browser test; never fails (the test then skips, saying why).
chromium:
	bash scripts/ensure-chromium.sh

# Debian's docker-compose for the deployment test's `docker-compose config`; never fails (that
# test then skips, saying why).
docker-compose:
	bash scripts/ensure-docker-compose.sh

test: $(VENV)/.installed-test postgres chromium docker-compose
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

clean:
	rm -rf .kpi out .pytest_cache artifacts
