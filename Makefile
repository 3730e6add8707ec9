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

.PHONY: setup demo test test-fast test-lowest bench lint clean gpu-pack gpu-check gpu-table3

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

# the fast tier at the lowest framework versions pyproject.toml declares (LOWEST), in .venv-lowest: those
# installed there, everything else (torch, catvae itself, ...) taken from .venv behind them
LOWEST := lightning==2.6.0 pytorch-lightning==2.6.0 torchmetrics==1.4.0 jsonargparse[signatures]==4.51.0 optuna==5.0.0
test-lowest: setup
	test -x .venv-lowest/bin/python || $(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install -q --disable-pip-version-check --no-deps $(LOWEST)
	$(BIN)/python -c "import site; print('import site; site.addsitedir(%r)' % site.getsitepackages()[0])" > \
	  $$(.venv-lowest/bin/python -c "import site; print(site.getsitepackages()[0])")/zz-catvae-venv.pth
	.venv-lowest/bin/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/catvae bench estimators
	$(BIN)/catvae bench step

# Here, once per GPU session (needs the package index): what a GPU machine of the device tool lacks, into ignored
# folders that `carry` can take along: MNIST gzipped (.gpu/, 11 MB) and the pure-Python wheels of jsonargparse and
# the two dependencies the GPU image lacks, and of the Lightning tested here (the image's may predate 2.6, the floor)
# (.whl/; PyYAML, typing-extensions and pytest are in the image). There
# they are installed with `pip install --no-index --no-deps --target /tmp/site` and PYTHONPATH (catvae.gpu_check).
GPU_WHEELS := jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 \
  lightning==2.6.6 pytorch-lightning==2.6.6 lightning-utilities==0.15.3
gpu-pack:
	mkdir -p .gpu/MNIST/raw .whl
	for f in $(CATVAE_DATA_DIR)/MNIST/raw/*-ubyte; do gzip -c $$f > .gpu/MNIST/raw/$$(basename $$f).gz; done
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# The GPU recipe (catvae/gpu_check.py), one device call: smoke test, capture tests, then the GPU tables, all within
# DEADLINE seconds; $(OUT)/ gets summary.txt, report.txt and results.tgz (what a device call brings back).
# DEVICE=cpu QUICK=--quick tries the whole recipe on any machine.
OUT ?= gpu-check
DEVICE ?= cuda
QUICK ?=
DEADLINE ?= 540
gpu-check:
	$(PYTHON) -m catvae.gpu_check --out $(OUT) --device $(DEVICE) --deadline_s $(DEADLINE) $(QUICK)

# Table 3 with 5 seeds on one GPU, one setting per device call (SETTING=l48_k2, l30_k10 or l32_k64: 35 runs x 60,000
# steps batched), within DEADLINE seconds; $(OUT)/ gets results.md/.csv, summary.txt, report.txt and results.tgz
# (the setting's results folder without checkpoints). Assemble the three: unpack each results.tgz, then
# `catvae compare configs/compare/table3_gpu.yaml --collect <the three folders> --out results/table3_gpu`.
SETTING ?= l48_k2
gpu-table3:
	$(PYTHON) -m catvae.gpu_check --out $(OUT) --table3 configs/compare/table3_gpu.yaml --setting $(SETTING) \
	  --deadline_s $(DEADLINE) $(QUICK)

lint: setup
	$(BIN)/ruff check catvae estimators callbacks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
