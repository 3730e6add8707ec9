r"""Polynomial programming (paper §4.1, eq. 16): a toy problem with a closed-form expected objective.

``π_θ`` is a product of ``L`` Bernoulli laws written as 2-class categoricals, ``θ ∈ R^{L×2}``, and

``F(θ) = (1/L) E_{π_θ} ‖X·(0 1)ᵀ − c·1_L‖_p^p``,  ``c = 0.45``, ``p ≥ 1``.

With ``q_i = softmax(θ_i)_2 = P(X_i = e_2)`` the objective is separable and exact:
``F(θ) = (1/L) Σ_i [(1 − q_i) c^p + q_i (1 − c)^p]``; its infimum ``c^p`` is approached when every
row puts all its mass on ``e_1`` (``c < 1/2``).

``relaxation="linear"`` optimizes the linear extension of §4.1 (2),
``f(x) = (1/L) Σ_i c^p x_{i1} + (1 − c)^p x_{i2}`` (the paper writes ``(−c)^p``; its value at the
vertex ``e_1`` is ``|0 − c|^p = c^p``), which equals (16) on one-hot samples, so the exact objective and
the optimum are the same but the estimators see another landscape (paper App. D.3, Fig. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from estimators.constraints import integer, nonnegative, one_of, positive, real

from ...core import EstimatorSpec, OptimizerSpec, SchedulerSpec
from ...tasks.base import BenchmarkTask
from .data import PolynomialProblem

__all__ = ["PolynomialTask"]

RELAXATIONS = ("none", "linear")


class PolynomialTask(BenchmarkTask):
    r"""Minimize eq. (16) over ``θ ∈ R^{L×2}`` with a gradient estimator (paper §4.1); ``L`` and ``c`` come
    from :class:`~catvae.data.PolynomialDataModule`.

    Each training step draws ``samples_per_step`` samples ``X ~ π_θ`` through the estimator and
    minimizes the Monte-Carlo mean of the objective.

    Logged: ``train/loss`` (the Monte-Carlo loss the estimator differentiates), ``train/objective``
    (the exact ``F(θ)`` at the current θ), ``val/objective`` (exact ``F(θ)``), ``val/gap``
    (``F(θ) − c^p``, ≥ 0) and ``val/optimum`` (``c^p``).

    Args:
        estimator: the gradient estimator (instance or registry name).
        p: the exponent ``p >= 1`` (paper: 1.5, 2, 3).
        samples_per_step: samples of ``X`` per step (paper: a batch of 256).
        lr: learning rate of the default optimizer, Adam (paper: 0.05); with ``optimizer`` set, that
            optimizer's own ``lr`` applies instead.
        optimizer, lr_scheduler: another optimizer / a learning-rate schedule (:data:`catvae.core.OptimizerSpec`,
            :data:`catvae.core.SchedulerSpec`); default Adam(``lr``) and a constant learning rate.
        relaxation: ``"none"`` (eq. 16) or ``"linear"`` (the linear extension of §4.1 (2)).
        init_std: θ starts at ``init_std · N(0, 1)``; 0 (default) is the uniform ``π_θ``.
    """

    monitor = "val/objective"
    hparams_metrics = ("train/loss_epoch", "val/objective", "val/gap")
    problem_type = PolynomialProblem
    arg_constraints = {"p": real(1.0), "samples_per_step": integer(1), "lr": positive,
                       "relaxation": one_of(*RELAXATIONS), "init_std": nonnegative}

    def __init__(
        self,
        estimator: EstimatorSpec = "redge",
        p: float = 2.0,
        samples_per_step: int = 256,
        lr: float = 0.05,
        relaxation: str = "none",
        init_std: float = 0.0,
        optimizer: OptimizerSpec = None,
        lr_scheduler: SchedulerSpec = None,
    ) -> None:
        super().__init__(estimator, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["estimator"])
        self.record_estimator()
        self.p = float(p)
        self.declare("theta")

    @property
    def run_name(self) -> str:
        return f"p{self.p:g}" + ("_linear" if self.hparams.relaxation == "linear" else "")

    def _attach(self, problem: PolynomialProblem) -> None:
        self.c, self.length = problem.c, problem.length
        self.create("theta", self.hparams.init_std * torch.randn(problem.length, 2))

    # -- the problem --------------------------------------------------------------------------------
    @property
    def optimum(self) -> float:
        """``min F = c^p``."""
        return self.c**self.p

    def f(self, x: Tensor) -> Tensor:
        """The objective of samples ``x [..., L, 2]`` (one-hot or relaxed), ``[...]``."""
        if self.hparams.relaxation == "linear":
            return (self.c**self.p * x[..., 0] + (1.0 - self.c) ** self.p * x[..., 1]).mean(-1)
        return (x[..., 1] - self.c).abs().pow(self.p).mean(-1)

    def objective(self, theta: Tensor | None = None) -> Tensor:
        """The exact ``F(θ) = E_{π_θ} f(X)`` (closed form: the problem is separable)."""
        q = torch.softmax(self.theta if theta is None else theta, dim=-1)[..., 1]
        return ((1.0 - q) * self.c**self.p + q * (1.0 - self.c) ** self.p).mean(-1)

    def sample_loss(self, n: int) -> Tensor:
        """The Monte-Carlo loss over ``n`` samples drawn through the estimator (differentiable)."""
        return self.estimator.surrogate(self.theta.expand(n, *self.theta.shape), self.f).mean()

    # -- Lightning ----------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.sample_loss(self.hparams.samples_per_step)
        self.log_train_objective(loss)
        with torch.no_grad():
            self.log_step("train/objective", self.objective())
        return loss

    def on_train_epoch_end(self) -> None:
        if not self.train_objective.update_called:  # logged before the checkpoint this run resumed from
            return
        super().on_train_epoch_end()  # train/loss_epoch, train/loss_window_mean and _std
        # the paper's Fig. 2 statistic (the training loss on the estimator's samples over the last 100 steps)
        # as a gap to the optimum, next to the exact one (val/gap)
        self.log("train/loss_window_gap", self.window_stats()[0] - self.optimum)

    def evaluate(self, stage: str, batch_idx: int) -> None:
        with torch.no_grad():
            value = self.objective()
        self.log(f"{stage}/objective", value, prog_bar=stage == "val", batch_size=1)
        self.log(f"{stage}/gap", value - self.optimum, batch_size=1)
        self.log(f"{stage}/optimum", self.optimum, batch_size=1)
