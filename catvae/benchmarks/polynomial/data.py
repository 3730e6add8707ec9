"""The problem instance of polynomial programming (paper §4.1): ``L`` binary variables and a target ``c``."""

from __future__ import annotations

from dataclasses import dataclass

from estimators.constraints import integer, interval

from ...data.steps import StepsDataModule

__all__ = ["PolynomialDataModule", "PolynomialProblem"]


@dataclass(frozen=True)
class PolynomialProblem:
    """``length`` binary variables (written as 2-class categoricals) and the target ``c`` of eq. (16)."""

    length: int
    c: float


class PolynomialDataModule(StepsDataModule):
    """Polynomial programming's instance (:class:`~catvae.tasks.PolynomialTask` holds θ and the objective).

    Args:
        length: ``L``, the number of binary variables (paper: 128).
        c: the target ``c`` in ``(0, 1/2)`` (paper: 0.45); the optimum puts all mass on ``e_1``.
        steps_per_epoch: optimizer steps between two evaluations of the exact objective.
    """

    run_name = "polynomial"
    # c < 1/2: the optimum is then all mass on e_1
    arg_constraints = {"length": integer(1), "c": interval(0.0, 0.5, low_open=True, high_open=True)}

    def __init__(self, length: int = 128, c: float = 0.45, steps_per_epoch: int = 100) -> None:
        super().__init__(steps_per_epoch)
        self.save_hyperparameters()
        self.length, self.c = length, float(c)

    def make_problem(self) -> PolynomialProblem:
        return PolynomialProblem(self.length, self.c)
