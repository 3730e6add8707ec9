r"""Sudoku completion as categorical optimization (paper §4.3), many puzzles at once.

``π_θ`` is a factorized categorical over the 81 cells (9 digits each); clue cells are clamped to
their digit. For each of the 27 groups ``g`` (rows, columns, 3×3 blocks) the digit count
``s_g(X) = Σ_{i∈g} X_i ∈ N^9`` is the all-ones vector exactly when the group holds each digit once, and

``F(θ) = E_{π_θ} Σ_g ‖s_g(X) − 1_9‖²``.

With ``q_i = softmax(θ_i)`` (one-hot at clues) and independent cells the expectation is exact:
``E‖s_g − 1‖² = Σ_k [Σ_{i∈g} q_ik(1 − q_ik) + (Σ_{i∈g} q_ik − 1)²]``.

All ``P`` puzzles are one tensor ``θ ∈ R^{P×81×9}`` (independent parameters per puzzle, one batched
estimator call per step). The puzzles come from :class:`~catvae.data.SudokuDataModule`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from estimators.constraints import integer, nonnegative, positive

from ...core import EstimatorSpec, OptimizerSpec, SchedulerSpec
from ...tasks.base import BenchmarkTask
from .data import SudokuProblem, membership, violations

__all__ = ["SudokuTask"]


class SudokuTask(BenchmarkTask):
    r"""Minimize the Sudoku penalty ``F(θ)`` of §4.3 for ``P`` puzzles at once (one θ per puzzle).

    Each step draws ``samples_per_step`` grids per puzzle through the estimator (clue cells replaced
    by their digit) and minimizes the sum over puzzles of the Monte-Carlo penalty, so every puzzle
    gets its own gradient, as in independent runs.

    Logged: ``train/loss`` (Monte-Carlo penalty, mean over puzzles); in validation ``val/objective`` and
    ``val/objective_std`` (the exact ``F(θ)``: mean and std over puzzles), ``val/loss`` and
    ``val/loss_std`` (the penalty of one sample per puzzle, from the evaluation RNG), ``val/violations``
    (the penalty of the argmax grid, mean over puzzles), and two solve counts, side by side:

    * ``val/solved_sample``: % of puzzles whose **last training sample** (the estimator's own hard sample
      of the latest step, clues clamped) is a valid grid. This is the paper's Table 2 count, as the
      authors' code counts it (the sampler's last sample through ``count_violations_batch``);
    * ``val/solved_argmax``: % of puzzles whose most likely grid (argmax per cell) is valid and keeps
      every clue.

    Both also per clue count, ``val/solved_sample/<n>_clues`` and ``val/solved_argmax/<n>_clues``, when the
    puzzles have several clue counts (a generated mix, or a file).

    Args:
        estimator: the gradient estimator (instance or registry name).
        lr: learning rate of the default optimizer, Adam (paper: 0.05); with ``optimizer`` set, that
            optimizer's own ``lr`` applies instead.
        optimizer, lr_scheduler: another optimizer / a learning-rate schedule (:data:`catvae.core.OptimizerSpec`,
            :data:`catvae.core.SchedulerSpec`); default Adam(``lr``) and a constant learning rate.
        samples_per_step: sampled grids per puzzle and step.
        init_std: θ starts at ``init_std · N(0, 1)`` (0: uniform over the digits).
    """

    monitor = "val/objective"
    hparams_metrics = ("train/loss_epoch", "val/objective", "val/solved_sample", "val/solved_argmax")

    problem_type = SudokuProblem
    optional_state = (*BenchmarkTask.optional_state, "last_sample_valid")
    arg_constraints = {"lr": positive, "samples_per_step": integer(1), "init_std": nonnegative}

    def __init__(
        self,
        estimator: EstimatorSpec = "redge",
        lr: float = 0.05,
        samples_per_step: int = 1,
        init_std: float = 0.0,
        optimizer: OptimizerSpec = None,
        lr_scheduler: SchedulerSpec = None,
    ) -> None:
        super().__init__(estimator, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["estimator"])
        self.record_estimator()
        self.register_buffer("groups", membership(), persistent=False)
        # per puzzle: the last training sample was a valid grid (checkpointed: a resumed or tested run keeps it)
        self.declare("theta", buffers=("last_sample_valid",))

    def _attach(self, problem: SudokuProblem) -> None:
        clues = problem.clues  # [P, 81], 0 = blank
        self.n_puzzles = len(clues)
        self.register_buffer("clues", clues, persistent=False)
        self.register_buffer("clue_mask", clues > 0, persistent=False)
        self.register_buffer("clue_one_hot", nn.functional.one_hot(clues, 10)[..., 1:].float(), persistent=False)
        self.create("theta", self.hparams.init_std * torch.randn(self.n_puzzles, 81, 9))
        self.create("last_sample_valid", torch.zeros(self.n_puzzles, dtype=torch.bool))
        counts = (clues > 0).sum(-1)
        self.clue_groups = {int(n): counts == n for n in counts.unique()} if len(counts.unique()) > 1 else {}

    # -- the problem --------------------------------------------------------------------------------
    def clamp(self, x: Tensor) -> Tensor:
        """Replace the clue cells of grids ``[..., P, 81, 9]`` by their one-hot digit."""
        return torch.where(self.clue_mask.unsqueeze(-1), self.clue_one_hot, x)

    def penalty(self, x: Tensor) -> Tensor:
        """``Σ_g ‖s_g(x) − 1‖²`` of grids ``[..., P, 81, 9]`` (one-hot or relaxed), ``[..., P]``."""
        counts = torch.einsum("gi,...ik->...gk", self.groups, x)
        return (counts - 1.0).pow(2).sum(dim=(-1, -2))

    def probs(self) -> Tensor:
        return self.clamp(torch.softmax(self.theta, dim=-1))

    def objective(self) -> Tensor:
        """The exact ``F(θ)`` per puzzle, ``[P]``."""
        q = self.probs()
        var = torch.einsum("gi,pik->pgk", self.groups, q * (1.0 - q))
        mean = torch.einsum("gi,pik->pgk", self.groups, q)
        return (var + (mean - 1.0).pow(2)).sum(dim=(-1, -2))

    def sample(self, n: int) -> Tensor:
        """``n`` clamped grids per puzzle through the estimator, ``[n, P, 81, 9]``."""
        return self.clamp(self.estimator(self.theta.expand(n, *self.theta.shape)))

    def argmax_grid(self) -> Tensor:
        """The most likely digit of every cell (clues kept), ``[P, 81]`` with values 1-9."""
        return torch.where(self.clue_mask, self.clues, self.theta.argmax(-1) + 1)

    def solved(self) -> Tensor:
        """Per puzzle: the argmax grid has no violation and keeps every clue, ``[P]`` bool."""
        grid = self.argmax_grid()
        keeps = ((grid == self.clues) | ~self.clue_mask).all(-1)
        return (violations(grid) == 0) & keeps

    # -- Lightning ----------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        seen = []

        def f(x: Tensor) -> Tensor:  # the penalty of clamped grids, [..., P]; keeps the samples' own values
            out = self.penalty(self.clamp(x))
            seen.append(out.detach())
            return out

        n = self.hparams.samples_per_step
        per_puzzle = self.estimator.surrogate(self.theta.expand(n, *self.theta.shape), f).mean(0)  # [P]
        # a hard sample's penalty is a sum of squared integers: 0 exactly when every group is a permutation;
        # the last sample drawn this step is the authors' "last training sample"
        self.last_sample_valid.copy_(seen[-1].reshape(-1, per_puzzle.shape[-1])[-1] == 0)
        self.log_train_objective(per_puzzle.mean())
        return per_puzzle.sum()

    def evaluate(self, stage: str, batch_idx: int) -> None:
        with torch.no_grad():
            exact = self.objective()
            with self.eval_rng(batch_idx):
                sampled = self.penalty(self.sample(1))[0]
            solved = {"sample": self.last_sample_valid.float() * 100.0, "argmax": self.solved().float() * 100.0}
            wrong = violations(self.argmax_grid()).mean()
        self.log(f"{stage}/objective", exact.mean(), prog_bar=stage == "val", batch_size=1)
        self.log(f"{stage}/objective_std", exact.std(correction=1 if len(exact) > 1 else 0), batch_size=1)
        self.log(f"{stage}/loss", sampled.mean(), batch_size=1)
        self.log(f"{stage}/loss_std", sampled.std(correction=1 if len(sampled) > 1 else 0), batch_size=1)
        self.log(f"{stage}/violations", wrong, batch_size=1)
        for how, per_puzzle in solved.items():
            self.log(f"{stage}/solved_{how}", per_puzzle.mean(), prog_bar=stage == "val", batch_size=1)
            for n, members in self.clue_groups.items():
                self.log(f"{stage}/solved_{how}/{n}_clues", per_puzzle[members.to(self.device)].mean(), batch_size=1)
