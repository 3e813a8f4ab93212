# posweep: `make demo` runs the built-in sweep and its report; `make test` runs the tests; `make lint` runs
# ruff and import-linter (the layer contract in pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench gpu-smoke lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first (a local wheel); an unpinned torch would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/posweep run recipes/tiny.yaml
	$(BIN)/posweep report results/tiny

bench: install
	$(BIN)/python benchmarks/run.py --repeats 3

# make gpu-smoke: on a GPU machine's own CUDA torch (no `install`: that is the CPU torch), the wheel kit
# installed (README, GPU smoke); SMOKE="--cpu --tiny" runs the same path on the CPU.
SMOKE ?=
GPU_PY ?= python3
gpu-smoke:
	PYTHONPATH=$(CURDIR) $(GPU_PY) benchmarks/gpu_smoke.py $(SMOKE)

lint: install
	$(BIN)/ruff check sweep tests benchmarks
	$(BIN)/ruff format --check sweep tests benchmarks
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format sweep tests benchmarks
	$(BIN)/ruff check --fix sweep tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
