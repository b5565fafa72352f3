# Two commands on a fresh clone with nothing but Python:  make run  |  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch build to install first; any torch>=2.4 works (make test TORCH='torch>=2.4').
# 2.13.0 is what CI runs: a CPU wheel on this project's machines, found on local disk.
TORCH ?= torch==2.13.0

.PHONY: run test test-all lint format bench figures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[data,train,lightgbm,catboost,jax,tf,serve,schedule,postgres,replay,dev]'
	touch $(STAMP)

run: $(STAMP)  ## set up and run the whole chain on embedded defaults
	$(BIN)/mlops run

# The fast suite by default (a few minutes); MLOPS_TEST_ALL=1 adds the long variants marked
# `slow` (the first hour end to end, the notebook, DDP, PostgreSQL tuning, contract fuzzing).
SLOW := $(if $(filter 1,$(MLOPS_TEST_ALL)),,-m "not slow")

test: $(STAMP)  ## set up, lint and run the test suite (MLOPS_TEST_ALL=1: the long variants too)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(SLOW) --durations=15

test-all:  ## the fast suite and the long variants, as CI runs them
	$(MAKE) test MLOPS_TEST_ALL=1

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

PEERS = mlserver kserve bentoml ray litserve torchserve

bench: $(STAMP)  ## the benchmarks (tens of minutes; writes benchmarks/results/)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/bench_training.py
	if command -v wrk >/dev/null; then $(BIN)/python benchmarks/serving.py --peers $(PEERS) --swaps 10; \
	else echo 'the serving peers need wrk (apt install wrk): ours, the floor and MLflow only'; $(BIN)/python benchmarks/serving.py; fi

figures: $(STAMP)  ## regenerate the README's pictures in docs/ from a real run
	$(BIN)/python docs/make_figures.py

clean:
	rm -rf $(VENV) .mlops .pytest_cache
