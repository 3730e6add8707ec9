# One entry point for set-up, the demo job and the tests (see README "Quick start").
# `make` targets are idempotent: the virtual environment is built once and reused.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.catvae-installed
ARCH   := $(shell uname -m)

# The torch/torchvision pair that installs on this kind of machine from local files
# (pyproject.toml keeps ranges, so GPU machines with another torch work too). Override with
# `make TORCH_PINS="torch==X torchvision==Y"` or `TORCH_PINS=` to take whatever pip resolves.
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif

# MNIST and the Sudoku files: ../shared/data where it exists (this project's machines), else the code's own
# default ./data (downloaded there); an explicit CATVAE_DATA_DIR wins. Nothing is written outside the repository.
ifneq ($(wildcard ../shared/data),)
export CATVAE_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test test-fast bench lint clean gpu-pack gpu-check gpu-table3

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

DEMO := --config configs/mnist/l48_k2.yaml --config configs/estimators/redge_cov.yaml --config configs/quick.yaml \
        --experiment_name demo

# The main job: a short MNIST training run with ReDGE-Cov (L=48, K=2), then its test metrics.
demo: setup
	$(BIN)/catvae fit $(DEMO)
	$(BIN)/catvae test $(DEMO) --ckpt_path last

test: setup
	$(BIN)/python -m pytest -q

# the edit-test loop: all but the end-to-end runs marked slow
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/catvae bench estimators
	$(BIN)/catvae bench step

# Here, once per GPU session (needs the package index): what a GPU machine of the device tool lacks,
# into ignored folders that `carry` can take along: MNIST gzipped (.gpu/, 11 MB) and the wheels of
# jsonargparse (for `catvae fit`) and pytest (for the CUDA tests), with their dependencies (.whl/).
# Carry [".gpu", ".whl"] and run `python3 -m catvae.gpu_check --out $OUT` there (no make needed).
gpu-pack:
	mkdir -p .gpu/MNIST/raw .whl
	for f in $(CATVAE_DATA_DIR)/MNIST/raw/*-ubyte; do gzip -c $$f > .gpu/MNIST/raw/$$(basename $$f).gz; done
	$(PYTHON) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl "jsonargparse[signatures]==4.53.0" pytest

# The GPU recipe (catvae/gpu_check.py): smoke test, then the GPU tables of docs/performance.md into
# $(OUT)/, each part in its own file. DEVICE=cpu QUICK=--quick tries the whole recipe on any machine.
OUT ?= gpu-check
DEVICE ?= cuda
QUICK ?=
gpu-check:
	$(PYTHON) -m catvae.gpu_check --out $(OUT) --device $(DEVICE) $(QUICK)

# Table 3 with 5 seeds (105 runs x 60,000 steps) batched on one GPU (catvae compare --batched), stopped at BUDGET
# seconds (540: a device call may last 600 s, and the stop writes the group's checkpoint) and resumed by the same
# command; its tables land in $(OUT)/table3_gpu/. QUICK=--quick tries it anywhere.
BUDGET ?= 540
gpu-table3:
	$(PYTHON) -m catvae.gpu_check --out $(OUT) --table3 configs/compare/table3_gpu.yaml --budget_s $(BUDGET) $(QUICK)

lint: setup
	$(BIN)/ruff check catvae estimators callbacks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
