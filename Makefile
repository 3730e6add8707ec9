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

.PHONY: setup demo test bench lint clean gpu-pack gpu-check

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

bench: setup
	$(BIN)/catvae bench estimators
	$(BIN)/catvae bench step

# Here, once per GPU session (needs the package index): what a GPU machine of the device tool lacks,
# into ignored folders that `carry` can take along: MNIST gzipped (.gpu/, 11 MB) and the wheels of
# jsonargparse for `catvae fit`/`compare` (.whl/). Carry [".gpu", ".whl"].
gpu-pack:
	mkdir -p .gpu/MNIST/raw .whl
	for f in $(CATVAE_DATA_DIR)/MNIST/raw/*-ubyte; do gzip -c $$f > .gpu/MNIST/raw/$$(basename $$f).gz; done
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0

# On the GPU machine (its own Python has torch, lightning, torchmetrics, tensorboard; no venv, no
# network): `make gpu-check PYTHON=python3`. Writes the GPU timing tables of docs/performance.md to
# $(OUT)/; fails if the fast step was not captured in a CUDA graph. Estimated 5-6 minutes on an H100
# (not yet run: no session so far had a GPU). DEVICE=cpu STEPS=3 checks the recipe on any machine.
OUT ?= gpu-check
DEVICE ?= cuda
STEPS ?= 100
GPU_DATA := /tmp/catvae-data
GPU_BENCH = CATVAE_DATA_DIR=$(GPU_DATA) $(PYTHON) -m catvae bench train --device $(DEVICE) --steps $(STEPS) \
            --warmup 20 --settings 48x2 32x64 --estimators gumbel st reinmax redge redge_max redge_cov redge_max_cov
gpu-check:
	mkdir -p $(OUT) $(GPU_DATA)/MNIST/raw
	if [ -d .gpu/MNIST/raw ]; then for f in .gpu/MNIST/raw/*.gz; do \
	  gunzip -c $$f > $(GPU_DATA)/MNIST/raw/$$(basename $$f .gz); done; \
	else cp $(CATVAE_DATA_DIR)/MNIST/raw/*-ubyte $(GPU_DATA)/MNIST/raw/; fi
	(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || echo "no GPU") > $(OUT)/machine.txt
	$(GPU_BENCH) > $(OUT)/bench_train_default.txt
	$(GPU_BENCH) --fast_step > $(OUT)/bench_train_fast_step.txt
	$(GPU_BENCH) --fast_step --exact_nelbo_every_n_steps 0 > $(OUT)/bench_train_fast_step_no_diag.txt
	CATVAE_DATA_DIR=$(GPU_DATA) $(PYTHON) -m catvae bench overhead --device $(DEVICE) > $(OUT)/bench_overhead.txt
	$(PYTHON) -m catvae bench estimators --device $(DEVICE) > $(OUT)/bench_estimators.txt
	$(PYTHON) -m catvae bench step --device $(DEVICE) > $(OUT)/bench_step.txt

lint: setup
	$(BIN)/ruff check catvae estimators callbacks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
