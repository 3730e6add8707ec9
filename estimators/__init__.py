"""Gradient estimators for categorical latent variables (pure PyTorch, no Lightning).

Every estimator is an ``nn.Module`` with one interface: ``forward(logits[..., K], hard=None)``
returns a sample ``[..., K]`` — exactly one-hot when hard — whose gradient with respect to the
logits is the estimator's. Build one by registry name::

    import estimators
    est = estimators.build("redge_cov", n_steps=3)   # t_1: the paper's uniform grid, 1/(n_steps - 1)
    z = est(logits)          # one-hot, ReDGE-Cov gradient

or by class (``estimators.ReDGECov(n_steps=3)``, also usable as a LightningCLI ``class_path``).

Given the objective ``f`` (samples ``[*lead, *batch, *event, K]`` to values ``[*lead, *batch]``), every
estimator gives a Monte-Carlo value of ``E[f(X)]`` carrying its gradient::

    loss = est.surrogate(logits, f).mean()   # f(est(logits)) for pathwise estimators

which is how models and tasks call them, so the score-function ``rloo`` (``pathwise = False``: its sample
carries no gradient) plugs in like the others.
"""

__distribution__ = "catvae"  # checked by catvae.layout: this top-level package is catvae's

from . import exact, functional
from .base import CategoricalEstimator, available, build, get, register
from .baselines import GumbelRao, GumbelSoftmax, ReinMax, StraightThrough
from .redge import DDIMEstimator, DiffusionSchedule, ReDGE, ReDGECov, ReDGEMax, ReDGEMaxCov
from .score import RLOO

__all__ = [
    "CategoricalEstimator",
    "DDIMEstimator",
    "DiffusionSchedule",
    "GumbelRao",
    "GumbelSoftmax",
    "ReDGE",
    "ReDGECov",
    "ReDGEMax",
    "ReDGEMaxCov",
    "RLOO",
    "ReinMax",
    "StraightThrough",
    "available",
    "build",
    "exact",
    "functional",
    "get",
    "register",
]
