"""Polynomial programming (§4.1, eq. 16, Fig. 2 and 4): the task and its data module."""

from .data import PolynomialDataModule
from .task import PolynomialTask

__all__ = ["PolynomialDataModule", "PolynomialTask"]
