# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test cluster cluster-test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml setup.py include/agent_traffic/ingest/_clf.c include/agent_traffic/delivery/vendors/_jsonobj.c
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned stack

demo: $(STAMP)   ## sample logs -> Airflow (SQLite) nightly run -> local receiver -> summary
	$(BIN)/python scripts/demo.py

test: $(STAMP)   ## the whole test suite (CI runs this)
	$(BIN)/ruff check .
	sh scripts/ensure-chromium.sh   # the report's browser test; installs Debian's chromium as root
	$(BIN)/python -m pytest -m "not cluster"

cluster: $(STAMP)  ## the compose layout without Docker: Postgres, Redis, Celery workers, S3, receiver
	$(BIN)/python -m agent_traffic.devtools.cluster

cluster-test: $(STAMP)  ## the nightly DAG on that layout: scheduled, REST, CLI, backfill, a killed worker
	$(BIN)/python -m pytest -m cluster tests/test_cluster.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)  ## benchmarks; results go to benchmarks/results.md
	$(BIN)/python -m benchmarks

clean:
	rm -rf .demo
