"""Moved to :mod:`catvae.benchmarks.polynomial.task` (the polynomial benchmark's package).

This path is an alias of that module, kept for the imports and class
paths written before (configs, runs' ``config.yaml``)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("catvae.benchmarks.polynomial.task")
