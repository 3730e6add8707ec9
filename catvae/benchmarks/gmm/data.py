r"""The problem instance of GMM variational inference (paper §4.2, after Liu et al. 2019).

Generative model (``d``-dimensional, ``K`` components, ``N`` points, uniform weights ``π``):
``Z_i ~ Categorical(π)``, ``M_k ~ N(0, σ₀² I_d)``, ``Y_i ~ N(M_{Z_i}, σ_y² I_d)``; the paper takes
``d = 2``, ``K = 20``, ``σ₀ = 15``, ``σ_y = 2``, ``N = 500``. The points are drawn once from a seeded
generator (``data_seed``), independent of the run's seed, or read from a file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from estimators.base import ConfigError
from estimators.constraints import integer, optional, positive, text

from ...data.paths import resolve_file
from ...data.steps import StepsDataModule

__all__ = ["GMMDataModule", "GMMProblem", "generate_gmm", "read_points"]


def generate_gmm(n_points: int, n_components: int, dim: int, sigma_0: float, sigma_y: float, seed: int):
    """Draw ``(y [N, d], z [N], means [K, d])`` from the generative model with uniform weights."""
    gen = torch.Generator().manual_seed(seed)
    means = sigma_0 * torch.randn(n_components, dim, generator=gen)
    z = torch.randint(n_components, (n_points,), generator=gen)
    y = means[z] + sigma_y * torch.randn(n_points, dim, generator=gen)
    return y, z, means


def read_points(path: Path) -> tuple[Tensor, Tensor | None]:
    """Points from a CSV file with a header: every column is a coordinate, except one named ``component``
    (the true component of the point, ``0 … K−1``, optional)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise ConfigError(f"{path}: no points (a header line, then one point per line)")
    header = [h.strip().lower() for h in rows[0]]
    label = header.index("component") if "component" in header else None
    coords = [i for i in range(len(header)) if i != label]
    try:
        y = torch.tensor([[float(r[i]) for i in coords] for r in rows[1:] if r], dtype=torch.float32)
        z = torch.tensor([int(r[label]) for r in rows[1:] if r]) if label is not None else None
    except (ValueError, IndexError) as err:
        raise ConfigError(f"{path}: every line needs {len(header)} numbers ({err})") from None
    return y, z


@dataclass(frozen=True)
class GMMProblem:
    """Points ``y [N, d]``, their true components ``z [N]`` (if known) and means ``[K, d]`` (if known), the
    number of components ``K`` and the generative model's ``σ₀``, ``σ_y``."""

    y: Tensor
    z: Tensor | None
    means: Tensor | None
    n_components: int
    sigma_0: float
    sigma_y: float


class GMMDataModule(StepsDataModule):
    """A GMM data set for :class:`~catvae.tasks.GMMTask` (which holds θ, the means and the objective).

    Args:
        n_points, n_components, dim, sigma_0, sigma_y: ``N, K, d, σ₀, σ_y`` of the generative model.
        data_seed: seed of the generated data set (kept fixed across run seeds).
        source: a CSV file of points instead of generated ones (see :func:`read_points`; resolved as given,
            then under ``$CATVAE_DATA_DIR/gmm/``); ``n_points`` and ``dim`` then come from the file.
        steps_per_epoch: optimizer steps between two evaluations of the exact objective.
    """

    arg_constraints = {"n_points": integer(1), "n_components": integer(2), "dim": integer(1), "sigma_0": positive,
                       "sigma_y": positive, "data_seed": integer(0), "source": optional(text)}

    def __init__(self, n_points: int = 500, n_components: int = 20, dim: int = 2, sigma_0: float = 15.0,
                 sigma_y: float = 2.0, data_seed: int = 0, source: str | None = None,
                 steps_per_epoch: int = 100) -> None:
        super().__init__(steps_per_epoch)
        self.save_hyperparameters()

    @property
    def run_name(self) -> str:
        return self.source_name("gmm", f"k{self.hparams.n_components}_n{self.hparams.n_points}")

    def make_problem(self) -> GMMProblem:
        hp = self.hparams
        if hp.source:
            y, z = read_points(resolve_file(hp.source, "gmm", "GMM points file"))
            means = None
            if z is not None and not (0 <= int(z.min()) and int(z.max()) < hp.n_components):
                raise ConfigError(f"{hp.source}: components must be in [0, {hp.n_components - 1}]")
        else:
            y, z, means = generate_gmm(hp.n_points, hp.n_components, hp.dim, hp.sigma_0, hp.sigma_y, hp.data_seed)
        return GMMProblem(y, z, means, hp.n_components, float(hp.sigma_0), float(hp.sigma_y))
