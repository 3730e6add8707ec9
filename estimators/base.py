"""The common estimator interface and the name registry."""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor, nn

from .functional import LOW_PRECISION

__all__ = [
    "CategoricalEstimator", "register", "build", "get", "available", "check_int", "check_positive", "check_unit",
    "is_int", "is_real",
]

_REGISTRY: dict[str, type[CategoricalEstimator]] = {}


class CategoricalEstimator(nn.Module):
    """A gradient estimator for ``E_{π_θ}[f(X)]`` with ``π_θ`` a factorized categorical (paper eq. 2).

    ``forward(logits)`` takes logits ``[..., K]`` (any leading shape: the rows are independent
    categoricals) and returns a sample ``[..., K]``:

    * ``hard=True``: the value is exactly one-hot; the gradient with respect to ``logits`` is the
      estimator's surrogate gradient.
    * ``hard=False``: the value is the estimator's relaxed (continuous) sample.

    float16/bfloat16 logits are processed in float32 and the result is cast back, so low-precision
    training gets the same samples and stable gradients.
    """

    #: registry name, set by :func:`register`.
    name: ClassVar[str] = ""

    def __init__(self, hard: bool = True) -> None:
        super().__init__()
        if not isinstance(hard, bool):
            raise ValueError(f"hard must be True or False, got {hard!r}")
        self.hard = hard

    def forward(self, logits: Tensor, hard: bool | None = None) -> Tensor:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point logits tensor [..., K]")
        if logits.dim() == 0 or logits.shape[-1] < 1:
            raise ValueError(f"logits must have shape [..., K] with K >= 1, got {tuple(logits.shape)}")
        hard = self.hard if hard is None else hard
        dtype = logits.dtype
        if dtype in LOW_PRECISION:
            return self._sample(logits.float(), hard).to(dtype)
        return self._sample(logits, hard)

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def exact_draws(self) -> bool:
        """Whether the value of ``forward(logits)`` is an exact draw ``X ~ Categorical(softmax(logits))``.

        True for the hard baselines (ST, Gumbel-ST by the Gumbel-max trick, ReinMax): then ``f(X)`` of
        the estimator's own sample is already an unbiased estimate of ``E_π[f(X)]``, and a model needs
        no second draw to report its exact objective. False for multi-step ReDGE, whose hard sample
        follows the law of the discretized diffusion (close to, but not, ``π``), and for relaxed samples.
        """
        return False

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        """The constructor arguments, for logging and for ``build(self.name, **hparams)``."""
        return {"hard": self.hard}


def register(name: str):
    """Class decorator adding an estimator to the registry under ``name``."""

    def deco(cls: type[CategoricalEstimator]) -> type[CategoricalEstimator]:
        if name in _REGISTRY:
            raise ValueError(f"estimator name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Registered estimator names."""
    return sorted(_REGISTRY)


def get(name: str) -> type[CategoricalEstimator]:
    """The estimator class registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(available())}") from None


def build(name: str, **kwargs) -> CategoricalEstimator:
    """Instantiate an estimator by registry name, e.g. ``build("redge_cov", n_steps=3, t_1=0.5)``."""
    cls = get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # unknown keyword: name the estimator and its parameters
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"estimator {name!r}: {err}; its parameters are: {', '.join(params)}") from None


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool`` (configs must not pass ``true`` for a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: int, low: int) -> int:
    """Validate an integer (not a bool) ``>= low``."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """Validate a strictly positive finite float (e.g. a temperature)."""
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_unit(name: str, value: float) -> float:
    """Validate a float in the half-open interval (0, 1]."""
    if not is_real(value) or not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)
