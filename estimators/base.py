"""The common estimator interface and the name registry."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from .constraints import ConfigError, boolean, validate
from .functional import LOW_PRECISION

__all__ = ["CategoricalEstimator", "ConfigError", "NonFiniteLogitsError", "available", "build", "get", "register"]

_REGISTRY: dict[str, type[CategoricalEstimator]] = {}


class NonFiniteLogitsError(ValueError):
    """An estimator was given NaN or infinite logits (argument validation, see
    :meth:`CategoricalEstimator.set_default_validate_args`)."""


class CategoricalEstimator(nn.Module):
    """A gradient estimator for ``E_{π_θ}[f(X)]`` with ``π_θ`` a factorized categorical (paper eq. 2).

    ``forward(logits)`` takes logits ``[..., K]`` (any leading shape: the rows are independent
    categoricals) and returns a sample ``[..., K]``:

    * ``hard=True``: the value is exactly one-hot; the gradient with respect to ``logits`` is the
      estimator's surrogate gradient.
    * ``hard=False``: the value is the estimator's relaxed (continuous) sample.

    float16/bfloat16 logits are processed in float32 and the result is cast back, so low-precision
    training gets the same samples and stable gradients.

    Non-finite logits never give a finite sample: with argument validation on (the default for CPU
    tensors, where the check costs one pass and no device synchronization) they raise
    :class:`NonFiniteLogitsError`; with it off (the default on accelerators, where reading the check's
    result would stall the device every step) the rows with a NaN or ±inf logit come out as NaN, so
    the loss shows the problem instead of a one-hot with a NaN gradient. As in
    ``torch.distributions``, :meth:`set_default_validate_args` changes the default for every
    estimator and the ``validate_args`` attribute overrides it for one instance.
    """

    #: registry name, set by :func:`register`.
    name: ClassVar[str] = ""
    #: what each constructor argument accepts (:mod:`estimators.constraints`), checked by ``validate``.
    arg_constraints: ClassVar[dict] = {"hard": boolean}
    #: ``None``: validate CPU logits only (no device sync); ``True``/``False``: always/never.
    _default_validate_args: ClassVar[bool | None] = None
    #: per-instance override of the class default (``None``: use the default).
    validate_args: bool | None = None

    @staticmethod
    def set_default_validate_args(value: bool | None) -> None:
        """Validate logits (finite values) in every estimator: ``True`` always, ``False`` never, ``None``
        (the default) only for CPU tensors."""
        if value not in (True, False, None):
            raise ConfigError(f"validate_args must be True, False or None, got {value!r}")
        CategoricalEstimator._default_validate_args = value

    def __init__(self, hard: bool = True) -> None:
        super().__init__()
        self.hard = validate(CategoricalEstimator.arg_constraints, {"hard": hard})["hard"]

    def forward(self, logits: Tensor, hard: bool | None = None) -> Tensor:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point logits tensor [..., K]")
        if logits.dim() == 0 or logits.shape[-1] < 1:
            raise ValueError(f"logits must have shape [..., K] with K >= 1, got {tuple(logits.shape)}")
        hard = self.hard if hard is None else hard
        validate = self.validate_args if self.validate_args is not None else self._default_validate_args
        if validate is None:
            validate = logits.device.type == "cpu"
        # a sum is finite only if every entry is (50x cheaper than isfinite().all() at [200, 32, 64] on CPU); a
        # non-finite sum of finite entries (overflow) is told apart by the exact check
        if validate and not math.isfinite(float(logits.detach().sum())) and not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).sum())
            raise NonFiniteLogitsError(
                f"{type(self).__name__} got non-finite logits ({bad} of {logits.numel()} entries are NaN or ±inf): "
                "the model diverged or its input is invalid"
            )
        dtype = logits.dtype
        x = logits.float() if dtype in LOW_PRECISION else logits
        out = self._sample(x, hard)
        if not validate:
            # φ − φ is 0 in every finite entry and NaN elsewhere: a row with a non-finite logit becomes NaN
            out = out + (x.detach() - x.detach()).sum(-1, keepdim=True)
        return out.to(dtype) if dtype in LOW_PRECISION else out

    def _sample(self, logits: Tensor, hard: bool) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    #: whether ``forward`` carries the estimator's gradient (pathwise / reparameterized estimators). A
    #: score-function estimator (``False``) needs the objective itself: it is used through :meth:`surrogate`.
    pathwise: ClassVar[bool] = True

    def surrogate(self, logits: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
        """A Monte-Carlo estimate of ``E_{X ~ softmax(logits)}[f(X)]`` whose gradient is this estimator's.

        ``f`` maps samples shaped like ``logits`` (with any extra leading dimensions, which it keeps) to
        objective values: ``[*lead, *batch, *event, K] -> [*lead, *batch]``. For a pathwise estimator this is
        ``f(self(logits))``, the same computation and the same random numbers as calling the estimator; a
        score-function estimator overrides it. Models and tasks call this, so any estimator plugs in.
        """
        return f(self(logits))

    @property
    def exact_draws(self) -> bool:
        """Whether the value of ``forward(logits)`` is an exact draw ``X ~ Categorical(softmax(logits))``.

        True for the hard baselines (ST, Gumbel-ST by the Gumbel-max trick, ReinMax): then ``f(X)`` of
        the estimator's own sample is already an unbiased estimate of ``E_π[f(X)]``, and a model needs
        no second draw to report its exact objective. False for multi-step ReDGE, whose hard sample
        follows the law of the discretized diffusion (close to, but not, ``π``), and for relaxed samples.
        """
        return False

    def set_hparam(self, name: str, value) -> None:
        """Change one hyperparameter in place, checked like the constructor's (``arg_constraints``): e.g. an
        annealed temperature (``callbacks.EstimatorSchedule``)."""
        if name not in self.hparams():
            raise ConfigError(f"{type(self).__name__} has no hyperparameter {name!r}; it has: "
                              f"{', '.join(self.hparams())}")
        self._set_hparam(name, validate(self.arg_constraints, {name: value})[name])

    def _set_hparam(self, name: str, value) -> None:
        setattr(self, name, value)

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
    except (KeyError, TypeError):
        raise ConfigError(f"unknown estimator {name!r}; choose one of: {', '.join(available())}") from None


def build(name: str, **kwargs) -> CategoricalEstimator:
    """Instantiate an estimator by registry name, e.g. ``build("redge_cov", n_steps=3)``."""
    cls = get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # unknown keyword: name the estimator and its parameters
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ConfigError(f"estimator {name!r}: {err}; its parameters are: {', '.join(params)}") from None
