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

export CATVAE_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test bench lint clean gpu-check

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

# On a GPU machine whose Python already has torch, lightning, torchvision, torchmetrics and tensorboard
# (no venv, no network): the GPU timing tables of docs/performance.md into $(OUT)/. Fails if the fast
# step was not captured in a CUDA graph. Estimated 5-6 minutes on an H100 (not yet run: no session had a GPU).
OUT ?= gpu-check
GPU_BENCH := $(PYTHON) -m catvae bench train --device cuda --estimators gumbel st reinmax redge redge_max redge_cov \
             redge_max_cov --settings 48x2 32x64 --steps 100 --warmup 20
gpu-check:
	mkdir -p $(OUT)
	nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $(OUT)/machine.txt
	$(GPU_BENCH) > $(OUT)/bench_train_default.txt
	$(GPU_BENCH) --fast_step > $(OUT)/bench_train_fast_step.txt
	$(GPU_BENCH) --fast_step --exact_nelbo_every_n_steps 0 > $(OUT)/bench_train_fast_step_no_diag.txt
	$(PYTHON) -m catvae bench overhead --device cuda > $(OUT)/bench_overhead.txt
	$(PYTHON) -m catvae bench estimators --device cuda > $(OUT)/bench_estimators.txt

lint: setup
	$(BIN)/ruff check catvae estimators callbacks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
