r"""Score-function (REINFORCE) estimators: unbiased, with no pathwise gradient through the sample.

For ``E_{X ~ q_φ}[f(X, φ)]`` (``f`` may itself depend on ``φ`` and on other parameters, as a VAE's KL term
and decoder do), the score-function identity gives
``∇ E[f] = E[∇f(X, φ)] + E[f(X, φ) ∇ log q_φ(X)]``; REINFORCE estimates it with samples ``X_1 … X_S``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import CategoricalEstimator, register
from .constraints import integer, validate
from .functional import log_softmax, sample_one_hot, softmax

__all__ = ["RLOO"]


@register("rloo")
class RLOO(CategoricalEstimator):
    r"""REINFORCE with a leave-one-out baseline (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!").

    :meth:`surrogate` draws ``S = n_samples`` exact samples ``X_s ~ q`` per row of ``logits`` and returns
    ``(1/S) Σ_s f(X_s)`` whose gradient is

    ``(1/S) Σ_s [∇f(X_s) + (f(X_s) − b_s) ∇ log q(X_s)]``,  ``b_s = (1/(S−1)) Σ_{s'≠s} f(X_{s'})``,

    unbiased for every ``S >= 2`` (``b_s`` is independent of ``X_s``), its variance falling as ``1/S``.
    ``log q(X)`` sums ``X · log softmax(φ)`` over the dimensions ``f`` reduces (the event: all of
    ``logits``' trailing dimensions beyond those ``f`` returns).

    ``forward`` draws one exact sample with **no** gradient: a score-function estimator needs the
    objective, so calling it on logits that require a gradient raises; use ``surrogate`` (as every catvae
    model and task does). ``hard=False`` returns ``softmax(φ)``.

    Args:
        n_samples: samples per row, ``>= 2`` (default 8).
        hard: exact one-hot samples (default) or ``softmax(φ)``.
    """

    arg_constraints = {**CategoricalEstimator.arg_constraints, "n_samples": integer(2)}
    pathwise = False

    def __init__(self, n_samples: int = 8, hard: bool = True) -> None:
        super().__init__(hard=hard)
        self.n_samples = validate(self.arg_constraints, {"n_samples": n_samples})["n_samples"]

    @property
    def exact_draws(self) -> bool:
        return self.hard

    def hparams(self) -> dict:
        return {"n_samples": self.n_samples, **super().hparams()}

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:
        if not hard:
            return softmax(logits)
        if torch.is_grad_enabled() and logits.requires_grad:
            raise RuntimeError("rloo is a score-function estimator: its gradient needs the objective; call "
                               "estimator.surrogate(logits, f) instead of estimator(logits)")
        return sample_one_hot(softmax(logits))

    def surrogate(self, logits: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
        if not self.hard:
            return f(self(logits))
        S = self.n_samples
        with torch.no_grad():
            z = self(logits.detach().expand(S, *logits.shape))  # exact draws, validated like forward's
        values = f(z)  # [S, *batch]: gradient through f's own dependence on φ and its parameters
        batch = values.shape[1:]
        event = logits.dim() - len(batch)
        if values.dim() < 1 or values.shape[0] != S or event < 1 or tuple(logits.shape[:len(batch)]) != tuple(batch):
            raise ValueError(f"f must map samples [S, *batch, *event, K] to [S, *batch]; logits "
                             f"{tuple(logits.shape)} gave values {tuple(values.shape)}")
        log_q = (z * log_softmax(logits)).sum(dim=tuple(range(-event, 0)))  # log q(X_s), [S, *batch]
        v = values.detach()
        baseline = (v.sum(0, keepdim=True) - v) / (S - 1)
        score = ((v - baseline) * log_q).mean(0)
        return values.mean(0) + (score - score.detach())
