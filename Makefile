# Two entry points a newcomer needs (README): `make demo` and `make test`. Everything else is their plumbing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.resnet-bench-installed

# One thread per rank: the suite runs several ranks per 2-core machine, and oversubscribed OpenMP threads
# collapse throughput (../shared/TOOLCHAIN.md). Ranks that want more set it themselves.
export OMP_NUM_THREADS ?= 1
# DeepSpeed's JIT-compiled ops are built once per environment, inside it (see suite/env.py).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: demo test lint install system-deps clean

## install: the virtual environment with every runtime and test dependency, plus DeepSpeed's compiled ops
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: deepspeed's build imports it, and this pair is the one pip finds on this machine's disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c 'from suite.env import build_ops; print("DeepSpeed ops ready in", build_ops())'
	touch $(STAMP)

## system-deps: Debian packages the integration tests drive for real (Slurm + munge, Chromium); root only
system-deps:
	bash tests/system-deps.sh

## demo: the main job on its embedded default
demo: install
	$(BIN)/resnet-bench run

## test: lint, then the whole test suite
test: install system-deps lint
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
