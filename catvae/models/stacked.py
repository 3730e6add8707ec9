"""Moved to :mod:`catvae.benchmarks.vae.stacked` (the VAE benchmark's package).

This path is an alias of that module, kept for the imports and class
paths written before (configs, runs' ``config.yaml``)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("catvae.benchmarks.vae.stacked")
