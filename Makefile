# The two commands of the README. Both create .venv on first use.
#   make demo  - install with the [train] extra and run the whole pipeline offline (stpm-demo)
#   make test  - install with the [train,dev] extras and run the test suite (including a fresh
#                runtime-only venv: tests/test_runtime_install.py)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision are capped at the releases pip serves from this machine's disk
# (setup.cfg says why); the CPU-only code paths work with either the CUDA or the CPU build.
STAMP_BASE := $(VENV)/.installed-base
STAMP_DEV  := $(VENV)/.installed-dev

.PHONY: demo test lint clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_BASE): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[train]"
	touch $@

$(STAMP_DEV): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[train,dev]"
	touch $@ $(STAMP_BASE)

demo: $(STAMP_BASE)
	$(BIN)/stpm-demo

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
