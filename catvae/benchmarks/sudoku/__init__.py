"""Sudoku (§4.3, Table 2): the task and its data module (generated and public puzzles)."""

from .data import SudokuDataModule
from .task import SudokuTask

__all__ = ["SudokuDataModule", "SudokuTask"]
