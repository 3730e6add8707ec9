r"""Variational inference for a Gaussian mixture model (paper §4.2, after Liu et al. 2019).

Generative model (``d``-dimensional, ``K`` components, ``N`` points, uniform weights ``π``):
``Z_i ~ Categorical(π)``, ``M_k ~ N(0, σ₀² I_d)``, ``Y_i ~ N(M_{Z_i}, σ_y² I_d)``; the points, ``K``,
``σ₀`` and ``σ_y`` come from :class:`~catvae.data.GMMDataModule` (the paper: ``d = 2``, ``K = 20``,
``σ₀ = 15``, ``σ_y = 2``, ``N = 500``).

Variational family: a factorized categorical ``π_θ`` over the assignments (``θ ∈ R^{N×K}``, ``L = N``)
and point estimates ``m̂ ∈ R^{K×d}`` of the means. The objective (the paper's ``F(θ; m̂)``) is

``F = Σ_i E_{π_θ^i}[log π_θ^i(Z_i) − log p_y(y_i | m̂, Z_i) − log p_z(Z_i)] − Σ_k log p_m(m̂_k)``.

The entropy term and ``−log p_z`` (``= log K``) are exact; the expected log-likelihood goes through
the estimator's sample ``X`` (one-hot ``N×K``): ``−log p_y(y_i | m̂, X_i) = ‖y_i − X_i m̂‖² / (2σ_y²) +
(d/2) log(2πσ_y²)``, with the component mean ``X_i m̂`` (the one-hot encoding of the assignment).
For one-hot ``X`` the expectation is also available in closed form,
``E‖y_i − X_i m̂‖² = Σ_k q_ik ‖y_i − m̂_k‖²``, which gives the exact ``F`` logged in validation.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from estimators.constraints import boolean, integer, nonnegative, positive

from ...core import EstimatorSpec, OptimizerSpec, SchedulerSpec
from ...tasks.base import BenchmarkTask
from .data import GMMProblem

__all__ = ["GMMTask", "clustering_accuracy"]


def clustering_accuracy(pred: Tensor, target: Tensor, n_components: int) -> float:
    """Fraction of points whose predicted cluster matches the true one under the best relabeling
    (Hungarian matching of the ``K×K`` confusion matrix, ``scipy.optimize.linear_sum_assignment``)."""
    confusion = torch.zeros(n_components, n_components, dtype=torch.long)
    confusion.index_put_((pred.cpu().long(), target.cpu().long()), torch.ones(len(pred), dtype=torch.long),
                         accumulate=True)
    rows, cols = linear_sum_assignment(confusion.numpy(), maximize=True)
    return float(confusion[rows, cols].sum()) / len(pred)


class GMMTask(BenchmarkTask):
    r"""Minimize the GMM variational objective ``F(θ; m̂)`` of §4.2 over ``θ`` and ``m̂`` with Adam.

    Logged: ``train/nelbo`` (the Monte-Carlo ``F`` the estimator differentiates, one sample per step),
    ``train/nelbo_window_mean`` / ``train/nelbo_window_std`` (mean and std of ``train/nelbo`` over the
    last ``window`` steps, the paper's Table 1 statistic, at each epoch end), ``val/nelbo`` (the exact
    ``F`` in closed form), ``val/accuracy`` (argmax assignments against the true ones, best label
    permutation; when the data module knows them) and ``val/oracle_accuracy`` (the same for the Bayes
    assignment under the true means, an upper reference; for generated data). The ``*_nc`` variants drop the additive constants
    (``N (d/2) log 2πσ_y² + N log K + K (d/2) log 2πσ₀²``), which do not change the optimization.

    Args:
        estimator: the gradient estimator (instance or registry name).
        lr: learning rate of the default optimizer, Adam (paper: 0.01); with ``optimizer`` set, that
            optimizer's own ``lr`` applies instead.
        optimizer, lr_scheduler: another optimizer / a learning-rate schedule (:data:`catvae.core.OptimizerSpec`,
            :data:`catvae.core.SchedulerSpec`); default Adam(``lr``) and a constant learning rate.
        samples_per_step: samples of the assignments per step (averaged).
        init_logit_std: θ starts at ``init_logit_std · N(0, 1)``; the means ``m̂`` at ``N(0, σ₀² I)``
            (random initializations of both, paper App. D).
        window: number of final steps for the mean ± std of ``train/nelbo`` (paper: 100).
        mc_terms: every term of ``F`` under the estimator's sample ``Z``: the entropy term
            ``Σ_i log π_θ^i(Z_i) − log p_z(Z_i)`` by Monte Carlo too, instead of in closed form (default). Both are
            unbiased for ``F``; the paper does not say which terms it samples. With it, the objective depends on
            θ directly as well as through ``Z`` (a score-function estimator such as RLOO sees only the latter).
    """

    monitor = "val/nelbo"
    train_tag = "train/nelbo"
    hparams_metrics = ("train/nelbo_epoch", "train/nelbo_window_mean", "val/nelbo", "val/accuracy")
    #: what ``catvae compare`` reports for a sweep of GMM runs unless its spec says otherwise (the spec's own form)
    compare_defaults = {
        "metrics": [
            {"tag": "train/nelbo_window_mean_nc", "header": "NELBO (own samples)"},
            {"tag": "test/nelbo_nc", "header": "exact NELBO"},
            {"tag": "test/accuracy", "header": "accuracy", "lower": False},
        ],
        "curves": [{"tag": "train/nelbo_window_mean_nc", "title": "NELBO, own samples (mean of the last 100 steps)",
                    "log": True},
                   {"tag": "val/nelbo_nc", "title": "exact NELBO", "log": True}],
        "note": "`NELBO (own samples)` is Table 1's statistic: the mean of the Monte-Carlo objective the estimator "
                "differentiates over the last 100 training steps, on its own samples, without the additive "
                "constants. `exact NELBO` is the same bound in closed form under q at the end.",
    }

    problem_type = GMMProblem
    arg_constraints = {"lr": positive, "samples_per_step": integer(1), "init_logit_std": nonnegative,
                       "window": integer(1), "mc_terms": boolean}

    def __init__(
        self,
        estimator: EstimatorSpec = "redge_cov",
        lr: float = 0.01,
        samples_per_step: int = 1,
        init_logit_std: float = 1.0,
        window: int = 100,
        mc_terms: bool = False,
        optimizer: OptimizerSpec = None,
        lr_scheduler: SchedulerSpec = None,
    ) -> None:
        super().__init__(estimator, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["estimator"])
        self.record_estimator()
        self.declare("theta", "means")
        self.register_buffer("_window", torch.zeros(window))  # the paper's window; the base's is 100 steps

    def _attach(self, problem: GMMProblem) -> None:
        (self.n_points, self.dim), self.n_components = problem.y.shape, problem.n_components
        self.sigma_0, self.sigma_y = problem.sigma_0, problem.sigma_y
        self.register_buffer("y", problem.y, persistent=False)
        self.register_buffer("z_true", problem.z, persistent=False)
        self.register_buffer("means_true", problem.means, persistent=False)
        self.create("theta", self.hparams.init_logit_std * torch.randn(self.n_points, self.n_components))
        self.create("means", self.sigma_0 * torch.randn(self.n_components, self.dim))
        self.constant = (
            self.n_points * self.dim / 2 * math.log(2 * math.pi * self.sigma_y**2)
            + self.n_points * math.log(self.n_components)
            + self.n_components * self.dim / 2 * math.log(2 * math.pi * self.sigma_0**2)
        )

    # -- the objective --------------------------------------------------------------------------------
    def _prior_term(self) -> Tensor:
        """``−Σ_k log p_m(m̂_k)``, ``p_m = N(0, σ₀² I)``."""
        return self.means.pow(2).sum() / (2 * self.sigma_0**2) + self.n_components * self.dim / 2 * math.log(
            2 * math.pi * self.sigma_0**2)

    def _entropy_term(self, x: Tensor | None = None) -> Tensor:
        """``Σ_i log π_θ^i(Z_i) − log p_z(Z_i)`` (``p_z`` uniform: ``log p_z = −log K``): its expectation under
        π_θ in closed form (``x`` None), or at the assignments ``x [..., N, K]`` (one-hot or relaxed), ``[...]``."""
        log_q = torch.log_softmax(self.theta, dim=-1)
        weights = log_q.exp() if x is None else x
        return (weights * log_q).sum(dim=(-1, -2)) + self.n_points * math.log(self.n_components)

    def _exact_terms(self) -> Tensor:
        """``Σ_i E[log π_θ^i(Z_i) − log p_z(Z_i)] − Σ_k log p_m(m̂_k)`` (everything but the likelihood)."""
        return self._entropy_term() + self._prior_term()

    def _nll_const(self) -> float:
        return self.n_points * self.dim / 2 * math.log(2 * math.pi * self.sigma_y**2)

    def sample_objective(self, x: Tensor) -> Tensor:
        """``F`` with the likelihood (and with ``mc_terms`` the entropy term) evaluated at assignments
        ``x [..., N, K]`` (one-hot or relaxed), ``[...]``."""
        residual = self.y - x @ self.means  # [..., N, d]
        nll = residual.pow(2).sum(dim=(-1, -2)) / (2 * self.sigma_y**2) + self._nll_const()
        if self.hparams.mc_terms:
            return nll + self._entropy_term(x) + self._prior_term()
        return nll + self._exact_terms()

    def objective(self) -> Tensor:
        """The exact ``F(θ; m̂)``: ``E‖y_i − X_i m̂‖² = Σ_k q_ik ‖y_i − m̂_k‖²`` for one-hot ``X``."""
        q = torch.softmax(self.theta, dim=-1)
        dist = torch.cdist(self.y, self.means).pow(2)  # [N, K]
        nll = (q * dist).sum() / (2 * self.sigma_y**2) + self._nll_const()
        return nll + self._exact_terms()

    def accuracy(self) -> float:
        return clustering_accuracy(self.theta.argmax(-1), self.z_true, self.n_components)

    def oracle_accuracy(self) -> float:
        """Accuracy of the Bayes assignment ``argmin_k ‖y_i − M_k‖`` under the true means."""
        return clustering_accuracy(torch.cdist(self.y, self.means_true).argmin(-1), self.z_true, self.n_components)

    # -- Lightning ------------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        s = self.hparams.samples_per_step
        loss = self.estimator.surrogate(self.theta.expand(s, self.n_points, self.n_components),
                                        self.sample_objective).mean()
        value = loss.detach()
        self.log_train_objective(value)
        self.log_step("train/nelbo_nc", value - self.constant)
        return loss

    def on_train_epoch_end(self) -> None:
        if not self.train_objective.update_called:  # logged before the checkpoint this run resumed from
            return
        super().on_train_epoch_end()  # train/nelbo_epoch, train/nelbo_window_mean and _std
        self.log("train/nelbo_window_mean_nc", self.window_stats()[0] - self.constant)

    def evaluate(self, stage: str, batch_idx: int) -> None:
        with torch.no_grad():
            value = self.objective()
        self.log(f"{stage}/nelbo", value, prog_bar=stage == "val", batch_size=1)
        self.log(f"{stage}/nelbo_nc", value - self.constant, batch_size=1)
        if self.z_true is not None:
            self.log(f"{stage}/accuracy", self.accuracy(), prog_bar=stage == "val", batch_size=1)
            if self.means_true is not None:
                self.log(f"{stage}/oracle_accuracy", self.oracle_accuracy(), batch_size=1)
