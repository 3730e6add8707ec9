"""Moved to :mod:`catvae.benchmarks.gmm.data` (the gmm benchmark's package).

This path is an alias of that module, kept for the imports and class
paths written before (configs, runs' ``config.yaml``)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("catvae.benchmarks.gmm.data")
