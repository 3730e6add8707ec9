r"""Sudoku puzzles (paper §4.3): the 81-character format, files, a generator of puzzles with a unique
solution, an exact solver, the violation count, and :class:`SudokuDataModule`.

Puzzles come from a seeded generator (a chosen number of clues, a unique solution; the default), from text
files in the 81-character format (``0`` or ``.`` for blanks; e.g. ``easy50.txt``, ``top95.txt``), or from CSV
files with a ``puzzle`` (or ``quizzes``) column such as the Ritvik19/Sudoku-Dataset used by the paper.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from estimators.base import ConfigError
from estimators.constraints import integer, one_or_list, optional, text, validate

from ...data.paths import resolve_file
from ...data.steps import StepsDataModule

__all__ = [
    "GROUPS",
    "SudokuDataModule",
    "SudokuProblem",
    "count_solutions",
    "generate_puzzles",
    "load_puzzles",
    "membership",
    "parse_puzzle",
    "violations",
]

ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
#: the 27 groups as lists of cell indexes: rows 0-8, columns 9-17, blocks 18-26.
GROUPS: list[list[int]] = (
    [[r * 9 + c for c in range(9)] for r in range(9)]
    + [[r * 9 + c for r in range(9)] for c in range(9)]
    + [[i for i in range(81) if BOX[i] == b] for b in range(9)]
)
GROUP_NAMES = [f"row {k + 1}" for k in range(9)] + [f"column {k + 1}" for k in range(9)] + [
    f"block {k + 1}" for k in range(9)
]
ALL = (1 << 9) - 1
#: clues of a generated puzzle: no puzzle with a unique solution has fewer than 17
CLUES = integer(17, 81)
POPCOUNT = [bin(m).count("1") for m in range(1 << 9)]


def membership() -> Tensor:
    """The ``[27, 81]`` 0/1 matrix ``G`` with ``s(X) = G X`` (digit counts per group)."""
    g = torch.zeros(27, 81)
    for k, cells in enumerate(GROUPS):
        g[k, cells] = 1.0
    return g


# -- parsing ----------------------------------------------------------------------------------------
def _contradiction(cells: list[int]) -> str | None:
    for name, group in zip(GROUP_NAMES, GROUPS):
        seen: set[int] = set()
        for i in group:
            v = cells[i]
            if v and v in seen:
                return f"contradictory clues: digit {v} appears twice in {name}"
            seen.add(v)
    return None


def parse_puzzle(text: str, where: str = "puzzle") -> list[int]:
    """81 digits (0 = blank) from an 81-character string with ``1-9`` clues and ``0``/``.`` blanks.

    Raises ``ConfigError`` prefixed by ``where`` (e.g. ``"file.txt line 3"``) for a wrong length, a bad
    character or contradictory clues (a digit twice in a row, column or block).
    """
    s = text.strip()
    if len(s) != 81:
        raise ConfigError(f"{where}: a puzzle has 81 characters, got {len(s)}")
    cells = []
    for pos, ch in enumerate(s):
        if ch in ".0":
            cells.append(0)
        elif "1" <= ch <= "9":
            cells.append(ord(ch) - 48)
        else:
            raise ConfigError(f"{where}: bad character {ch!r} at position {pos + 1}; use 1-9 for clues, 0 or . for blanks")
    problem = _contradiction(cells)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return cells


def load_puzzles(source: str | os.PathLike, limit: int | None = None, offset: int = 0) -> list[list[int]]:
    """Puzzles from a text file (one 81-character puzzle a line; blank lines and ``#`` comments are
    skipped) or a ``.csv`` file with a ``puzzle`` or ``quizzes`` column; ``limit`` puzzles from the
    ``offset``-th. Invalid puzzles raise ``ConfigError`` naming the file and line number."""
    path = resolve_file(source, "sudoku", "sudoku puzzle file")
    puzzles: list[list[int]] = []
    wanted = None if limit is None else offset + limit
    index = 0
    with open(path, newline="") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(handle)
            header = next(reader, None) or []
            names = [h.strip().lower() for h in header]
            column = next((names.index(n) for n in ("puzzle", "quizzes", "quiz") if n in names), None)
            if column is None:
                raise ConfigError(f"{path} line 1: no 'puzzle' column in the CSV header {header}")
            for row in reader:
                if wanted is not None and index >= wanted:
                    break
                if not row:
                    continue
                if index >= offset:
                    where = f"{path} line {reader.line_num}"
                    if column >= len(row):
                        raise ConfigError(f"{where}: the row has no 'puzzle' field")
                    puzzles.append(parse_puzzle(row[column], where))
                index += 1
        else:
            for lineno, line in enumerate(handle, start=1):
                if wanted is not None and index >= wanted:
                    break
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if index >= offset:
                    puzzles.append(parse_puzzle(line, f"{path} line {lineno}"))
                index += 1
    if not puzzles:
        raise ConfigError(f"{path}: no puzzles (offset {offset}, {index} puzzles in the file)")
    return puzzles


# -- exact solving and generation -------------------------------------------------------------------
def count_solutions(cells: list[int], limit: int = 2, rng: random.Random | None = None) -> tuple[int, list[int] | None]:
    """``(number of solutions, up to limit; the first solution found)`` by backtracking with bitmasks
    and the fewest-candidates heuristic. ``rng`` shuffles the digit order (random complete grids)."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    grid = list(cells)
    for i, v in enumerate(grid):
        if v:
            bit = 1 << (v - 1)
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & bit:
                return 0, None
            rows[ROW[i]] |= bit
            cols[COL[i]] |= bit
            boxes[BOX[i]] |= bit
    empties = [i for i, v in enumerate(grid) if not v]
    found: list = [0, None]

    def search(n_left: int) -> bool:
        if n_left == 0:
            found[0] += 1
            if found[1] is None:
                found[1] = list(grid)
            return found[0] >= limit
        best, best_mask, best_n = -1, 0, 10
        for i in empties:
            if grid[i]:
                continue
            mask = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            n = POPCOUNT[mask]
            if n < best_n:
                best, best_mask, best_n = i, mask, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        digits = [d for d in range(9) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        r, c, b = ROW[best], COL[best], BOX[best]
        for d in digits:
            bit = 1 << d
            grid[best] = d + 1
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search(n_left - 1)
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            grid[best] = 0
            if stop:
                return True
        return False

    search(len(empties))
    return found[0], found[1]


def _unique_without(puzzle: list[int], cell: int) -> bool:
    """Whether ``puzzle`` with ``cell`` blanked still has only the solution it has now: no other
    digit at ``cell`` leads to a solution."""
    value = puzzle[cell]
    trial = list(puzzle)
    for d in range(1, 10):
        if d == value:
            continue
        trial[cell] = d
        if count_solutions(trial, limit=1)[0]:
            return False
    return True


def generate_puzzles(n: int, n_clues: int | Sequence[int] = 30, seed: int = 0,
                     max_tries: int = 50) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` puzzles with a unique solution, and their solutions; puzzle ``k`` has exactly ``n_clues`` clues,
    or ``n_clues[k % len(n_clues)]`` for a list (an even mix of clue counts).

    A random complete grid (randomized backtracking), then clues are removed in random order as long
    as the solution stays unique, until the clue count is reached. Deterministic given ``seed``.
    Greedy removal reliably reaches about 25 clues; fewer may need many tries (``ConfigError`` after
    ``max_tries`` grids per puzzle).
    """
    counts = validate({"n": integer(1), "n_clues": one_or_list(CLUES)}, {"n": n, "n_clues": n_clues})["n_clues"]
    counts = counts if isinstance(counts, list) else [counts]
    rng = random.Random(seed)
    puzzles, solutions = [], []
    for k in range(n):
        target = counts[k % len(counts)]
        for _ in range(max_tries):
            _, solution = count_solutions([0] * 81, limit=1, rng=rng)
            puzzle = list(solution)
            clues = 81
            order = list(range(81))
            rng.shuffle(order)
            for cell in order:
                if clues == target:
                    break
                if _unique_without(puzzle, cell):
                    puzzle[cell] = 0
                    clues -= 1
            if clues == target:
                puzzles.append(puzzle)
                solutions.append(solution)
                break
        else:
            raise ConfigError(f"could not generate puzzle {k} with {target} clues in {max_tries} tries; use more clues")
    return puzzles, solutions


def violations(grid: Tensor) -> Tensor:
    """``Σ_g ‖s_g − 1‖²`` of digit grids ``[..., 81]`` with values 1-9 (0 for a blank counts as no digit)."""
    one_hot = nn.functional.one_hot(grid.long(), 10)[..., 1:].to(torch.float32)
    counts = torch.einsum("gi,...ik->...gk", membership().to(grid.device), one_hot)
    return (counts - 1.0).pow(2).sum(dim=(-1, -2))


@dataclass(frozen=True)
class SudokuProblem:
    """``P`` puzzles as digit grids ``clues [P, 81]`` (``0`` for a blank)."""

    clues: Tensor


class SudokuDataModule(StepsDataModule):
    """A set of Sudoku puzzles for :class:`~catvae.tasks.SudokuTask` (which holds one θ per puzzle).

    Args:
        source: ``None`` (default) for generated puzzles; else a puzzle file (``.txt``: one 81-character
            puzzle a line, ``0`` or ``.`` for blanks; ``.csv``: a ``puzzle`` column), resolved as given, then
            under ``$CATVAE_DATA_DIR/sudoku/``.
        n_puzzles: number of puzzles (generated, or read from the file; ``None``: the whole file).
        offset: skip that many puzzles of the file.
        n_clues: clues per generated puzzle (17-81; below ~25 generation gets slow), or a list of clue counts
            for an even mix (puzzle ``k`` gets ``n_clues[k % len]``; ``configs/sudoku/table2.yaml``).
        generator_seed: seed of the puzzle generator (independent of the run's seed).
        steps_per_epoch: optimizer steps between two evaluations.
    """

    arg_constraints = {"source": optional(text), "n_puzzles": optional(integer(1)), "offset": integer(0),
                       "n_clues": one_or_list(CLUES), "generator_seed": integer(0)}

    def __init__(self, source: str | None = None, n_puzzles: int | None = 100, offset: int = 0,
                 n_clues: int | list[int] = 30,
                 generator_seed: int = 0, steps_per_epoch: int = 100) -> None:
        super().__init__(steps_per_epoch)
        self.save_hyperparameters()

    @property
    def run_name(self) -> str:
        counts = self.hparams.n_clues
        mix = f"{min(counts)}-{max(counts)}" if isinstance(counts, (list, tuple)) else counts
        return self.source_name("sudoku", f"gen{mix}")

    def make_problem(self) -> SudokuProblem:
        hp = self.hparams
        if hp.source is None:
            puzzles, _ = generate_puzzles(hp.n_puzzles or 100, hp.n_clues, hp.generator_seed)
        else:
            puzzles = load_puzzles(hp.source, hp.n_puzzles, hp.offset)
        return SudokuProblem(torch.tensor(puzzles, dtype=torch.long))
