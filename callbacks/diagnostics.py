r"""Gradient diagnostics: bias, spread and alignment of an estimator's gradient against a reference.

For an objective ``J(θ) = (1/B) Σ_b E_{z_b ~ q(·|φ_b)}[f_b(z_b)]`` with logits ``φ = φ(θ)`` ``[B, L, K]``
(one factorized categorical per example, paper eq. 2), the estimator's gradient of ``J`` with respect to
each parameter group is drawn ``M`` times and compared with a reference gradient ``g``:

* ``exact``: enumeration of all ``K^L`` configurations of every example (when ``K^L <= max_configs``);
* ``rloo``: otherwise REINFORCE with a leave-one-out baseline over ``reference_samples`` exact draws —
  unbiased, so it is a reference up to its own Monte-Carlo error.

Logged per group ``G`` as ``diag/<ref>/<G>/<metric>`` (``<ref>`` is ``exact`` or ``rloo``):
``rel_bias = ‖ḡ − g‖/‖g‖`` (ḡ the mean of the M draws; its Monte-Carlo floor is ``noise_floor``),
``rel_std = sqrt(tr Cov ĝ)/‖g‖`` (one draw), ``noise_floor = rel_std/sqrt(M)``, ``cos`` (mean cosine of
one draw with g) and ``cos_mean`` (cosine of ḡ with g). Group ``logits`` is ``∂J/∂φ`` itself.

The module protocol: ``diagnostic_objective(batch) -> (logits [B, L, K], f)`` with ``f(z [N, B, L, K]) -> [N, B]``
the per-example objective (it may use the parameters and ``logits``); every catvae task has it (the VAE's ``f`` is
its negative ELBO).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from estimators import exact
from estimators.base import ConfigError
from estimators.constraints import integer, validate
from estimators.rng import seeded
from estimators.score import RLOO

__all__ = ["GradientDiagnostics", "gradient_diagnostics", "reference_gradient", "summarize"]

Objective = Callable[[Tensor], Tensor]


def _grads(value: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def reference_gradient(logits: Tensor, f: Objective, inputs: Sequence[Tensor], method: str = "auto",
                       max_configs: int = 65536, samples: int = 1000, chunk: int | None = None) -> tuple[list[Tensor], str]:
    """``∇ J`` with respect to ``inputs`` (tensors ``logits`` depends on, or ``logits`` itself), and its kind.

    ``method``: ``exact`` (enumeration of the ``K^L`` configurations of every example), ``rloo``
    (REINFORCE with leave-one-out baseline, ``samples`` exact draws per example) or ``auto`` (exact when
    ``K^L <= max_configs``).
    """
    B, Ld, K = logits.shape
    chunk = chunk or max(1, 32768 // B)  # configurations (or samples) × examples evaluated at once
    if method == "auto":
        method = "exact" if K**Ld <= max_configs else "rloo"
    log_q = torch.log_softmax(logits, dim=-1)
    total = [torch.zeros_like(i) for i in inputs]
    if method == "exact":
        configs = exact.configurations(Ld, K, logits.dtype, logits.device)  # [N, L, K]
        for start in range(0, len(configs), chunk):
            c = configs[start:start + chunk]
            z = c[:, None].expand(len(c), B, Ld, K)
            weight = (z * log_q).sum(dim=(-1, -2)).exp()  # q_b(c), [n, B]
            part = (weight * f(z)).sum(0).mean()
            total = [t + g for t, g in zip(total, _grads(part, inputs))]
        return total, "exact"
    if method != "rloo":
        raise ConfigError(f"method must be auto, exact or rloo, got {method!r}")
    if samples < 2:
        raise ConfigError(f"the leave-one-out baseline needs samples >= 2, got {samples!r}")
    # the training estimator itself (estimators.RLOO), in chunks of >= 2 samples: each chunk is an unbiased
    # estimate with its own leave-one-out baseline, weighted by its share of the samples
    done = 0
    while done < samples:
        n = min(max(chunk, 2), samples - done)
        n = n if samples - done - n != 1 else n + 1  # never leave a chunk of one sample
        part = RLOO(n_samples=n).surrogate(logits, f).mean() * (n / samples)
        total = [t + g for t, g in zip(total, _grads(part, inputs))]
        done += n
    return total, "rloo"


def gradient_diagnostics(estimator: nn.Module, logits: Tensor, f: Objective,
                         groups: dict[str, Sequence[Tensor]] | None = None, n_draws: int = 32,
                         reference: str = "auto", max_configs: int = 65536, reference_samples: int = 1000,
                         include_logits: bool = True) -> tuple[dict[str, dict[str, float]], str]:
    """Compare ``n_draws`` estimator gradients of ``J`` with the reference, per parameter group.

    ``logits`` ``[B, L, K]`` must carry the graph to the group parameters. Returns
    ``({group: {rel_bias, rel_std, noise_floor, cos, cos_mean}}, reference kind)``.
    """
    if n_draws < 2:
        raise ConfigError(f"n_draws must be an integer >= 2, got {n_draws!r}")
    groups = {k: [p for p in v if p.requires_grad] for k, v in (groups or {}).items()}
    groups = {k: v for k, v in groups.items() if v}
    if include_logits:
        if not logits.requires_grad:
            logits = logits.detach().requires_grad_(True)
        groups = {"logits": [logits], **groups}
    names = list(groups)
    inputs = [t for k in names for t in groups[k]]
    sizes = [len(groups[k]) for k in names]

    def flat(grads: list[Tensor]) -> list[Tensor]:
        out, i = [], 0
        for n in sizes:
            out.append(torch.cat([g.reshape(-1) for g in grads[i:i + n]]).double())
            i += n
        return out

    ref, kind = reference_gradient(logits, f, inputs, reference, max_configs, reference_samples)
    ref = flat(ref)
    moments = [exact.Moments() for _ in names]
    cosines = [0.0 for _ in names]
    for _ in range(n_draws):
        value = estimator.surrogate(logits[None], f).mean()  # one draw, f's leading sample dimension of 1
        for i, (g, ref_g) in enumerate(zip(flat(_grads(value, inputs)), ref)):
            moments[i].add(g[None])
            cosines[i] += nn.functional.cosine_similarity(g, ref_g, dim=0, eps=1e-30).item() / n_draws
    stats = {name: summarize(g, m.mean, m.var().sum(), cos, n_draws)
             for name, g, m, cos in zip(names, ref, moments, cosines)}
    return stats, kind


def summarize(reference: Tensor, mean: Tensor, total_var: Tensor | float, cos: float, n_draws: int) -> dict[str, float]:
    """The statistics of the module docstring from ``n_draws`` gradient draws: their ``mean`` (flat, like
    ``reference``), the sum of their per-coordinate variances ``tr Cov ĝ`` (``ddof=1``) and their mean cosine
    ``cos`` with the reference."""
    norm = reference.norm().clamp_min(1e-30)
    rel_std = float(torch.as_tensor(total_var).sqrt() / norm)
    return {
        "rel_bias": ((mean - reference).norm() / norm).item(),
        "rel_std": rel_std,
        "noise_floor": rel_std / math.sqrt(n_draws),
        "cos": float(cos),
        "cos_mean": nn.functional.cosine_similarity(mean, reference, dim=0, eps=1e-30).item(),
    }


class GradientDiagnostics(L.Callback):
    """Every ``every_n_steps`` training steps, diagnose the module's estimator on a fixed small batch.

    Args:
        every_n_steps: diagnose at global steps 0, N, 2N, …
        n_draws: ``M`` independent estimator draws per diagnosis.
        batch_size: examples of the fixed batch (the first ``batch_size`` of the first training batch).
        groups: ``{name: [parameter-name prefixes]}``; default: one group per top-level submodule with
            parameters (``encoder``, ``decoder`` for the VAE), plus ``logits``.
        max_configs: enumerate when ``K^L`` is at most this, else use the REINFORCE-LOO reference.
        reference_samples: draws of the REINFORCE-LOO reference per example.
        seed: seed of the diagnostic's own RNG (the training RNG is not touched).

    The results are logged to every logger at the current step and kept in ``history``
    (``[(step, {name: value})]``).
    """

    arg_constraints = {"every_n_steps": integer(1), "n_draws": integer(2), "batch_size": integer(1),
                       "max_configs": integer(1), "reference_samples": integer(2), "seed": integer(0)}

    def __init__(self, every_n_steps: int = 500, n_draws: int = 32, batch_size: int = 16,
                 groups: dict[str, list[str]] | None = None, max_configs: int = 65536,
                 reference_samples: int = 1000, seed: int = 0) -> None:
        validate(self.arg_constraints, locals())
        self.every_n_steps, self.n_draws, self.batch_size = every_n_steps, n_draws, batch_size
        self.groups, self.max_configs, self.reference_samples, self.seed = groups, max_configs, reference_samples, seed
        self._batch = None
        self.history: list[tuple[int, dict[str, float]]] = []

    def _groups(self, module: nn.Module) -> dict[str, list[Tensor]]:
        named = dict(module.named_parameters())
        if self.groups:
            return {g: [p for n, p in named.items() if any(n.startswith(pre) for pre in prefixes)]
                    for g, prefixes in self.groups.items()}
        return {name: list(child.parameters()) for name, child in module.named_children()
                if name != "estimator" and any(True for _ in child.parameters())}

    @staticmethod
    def supports(module) -> bool:
        """Whether ``module`` follows the protocol of the module docstring."""
        return callable(getattr(module, "diagnostic_objective", None))

    def check(self, trainer, pl_module) -> None:
        """Raise :class:`ConfigError` for a module without the protocol (``catvae`` calls it before anything is
        written; :meth:`setup` calls it too, for a plain ``Trainer``)."""
        if not self.supports(pl_module):
            raise ConfigError(f"GradientDiagnostics needs a task with diagnostic_objective(batch) -> (logits, f); "
                              f"{type(pl_module).__name__} has none: remove it from --trainer.callbacks")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check(trainer, pl_module)

    def _objective(self, module, batch):
        if self.supports(module):
            return module.diagnostic_objective(batch)
        raise ConfigError(f"{type(module).__name__} has no diagnostic_objective(batch) -> (logits, f)")

    def diagnose(self, module: nn.Module, batch) -> dict[str, float]:
        with seeded(self.seed, getattr(module, "device", None)), torch.enable_grad():
            logits, f = self._objective(module, batch)
            stats, kind = gradient_diagnostics(module.estimator, logits, f, self._groups(module), self.n_draws,
                                               "auto", self.max_configs, self.reference_samples)
        return {f"diag/{kind}/{g}/{m}": v for g, s in stats.items() for m, v in s.items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._batch is None:
            self._batch = batch[: self.batch_size].detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # the step just taken
        if step % self.every_n_steps or self._batch is None or trainer.sanity_checking:
            return
        metrics = self.diagnose(pl_module, self._batch)
        self.history.append((step, metrics))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
