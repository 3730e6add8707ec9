"""Declarative argument checks, in the spirit of ``torch.distributions.constraints``, and the one error type.

A class states what its constructor accepts as ``arg_constraints = {"lr": positive, "n_steps": integer(2)}``
and calls :func:`validate` with its arguments; a bad value raises :class:`ConfigError` naming the argument,
the rule and the value. The rules are the same everywhere: a bool is never a number or a count, and
non-finite floats (``nan``, ``inf``) are rejected wherever a number is expected.

This module is the bottom of the import graph (pure Python), so that estimators, data, tasks, callbacks
and the CLI raise the same type.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "CheckedInit", "ConfigError", "Constraint", "boolean", "integer", "interval", "is_int", "is_real", "nonnegative",
    "one_of", "one_or_list", "optional", "positive", "real", "sizes", "text", "unit_interval", "validate",
]


class ConfigError(ValueError):
    """A value the user chose (a hyperparameter, a config entry, a flag, a file) is invalid.

    The message names the value and how to fix it. This is the one error type that the ``catvae``
    command reports as a single ``catvae: error: ...`` line with exit status 2; any other exception is
    a bug and keeps its traceback.
    """


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool`` (configs must not pass ``true`` for a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Constraint:
    """A rule for one argument: ``constraint(name, value)`` returns the value (normalized, e.g. an ``int``
    as a ``float``) or raises :class:`ConfigError`."""

    #: what a valid value is, for the message ("an integer >= 1").
    description = "valid"

    def check(self, value) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def normalize(self, value):
        return value

    def __call__(self, name: str, value):
        if not self.check(value):
            raise ConfigError(f"{name} must be {self.description}, got {value!r}")
        return self.normalize(value)

    def __repr__(self) -> str:
        return f"<{self.description}>"


class _Integer(Constraint):
    def __init__(self, low: int | None, high: int | None) -> None:
        self.low, self.high = low, high
        bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
        self.description = "an integer" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
        if low is not None and high is not None:
            self.description = f"an integer in [{low}, {high}]"

    def check(self, value) -> bool:
        return is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class _Real(Constraint):
    def __init__(self, low: float | None, high: float | None, low_open: bool, high_open: bool, text: str) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.description = text

    def check(self, value) -> bool:
        if not is_real(value) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def normalize(self, value) -> float:
        return float(value)


class _OneOf(Constraint):
    def __init__(self, choices: Sequence) -> None:
        self.choices = tuple(choices)
        self.description = f"one of {list(self.choices)}"

    def check(self, value) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)


class _Boolean(Constraint):
    description = "true or false"

    def check(self, value) -> bool:
        return isinstance(value, bool)


class _Optional(Constraint):
    def __init__(self, inner: Constraint) -> None:
        self.inner = inner
        self.description = f"{inner.description} or null"

    def check(self, value) -> bool:
        return value is None or self.inner.check(value)

    def normalize(self, value):
        return None if value is None else self.inner.normalize(value)


class _OneOrList(Constraint):
    def __init__(self, inner: Constraint) -> None:
        self.inner = inner
        self.description = f"{inner.description}, or a non-empty list of them"

    def check(self, value) -> bool:
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return len(value) > 0 and all(self.inner.check(v) for v in value)
        return self.inner.check(value)

    def normalize(self, value):
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return [self.inner.normalize(v) for v in value]
        return self.inner.normalize(value)


class _Text(Constraint):
    description = "a non-empty string"

    def check(self, value) -> bool:
        return isinstance(value, str) and bool(value.strip())


class _Sizes(Constraint):
    description = "a list of layer sizes >= 1 (e.g. [512, 256])"

    def check(self, value) -> bool:
        return (isinstance(value, Sequence) and not isinstance(value, (str, bytes))
                and all(is_int(v) and v >= 1 for v in value))

    def normalize(self, value) -> list[int]:
        return list(value)


def integer(low: int | None = None, high: int | None = None) -> Constraint:
    """An ``int`` (not a ``bool``) in ``[low, high]``."""
    return _Integer(low, high)


def real(low: float | None = None, high: float | None = None) -> Constraint:
    """A finite number (not a ``bool``) in ``[low, high]``."""
    parts = [f">= {low:g}" if low is not None else "", f"<= {high:g}" if high is not None else ""]
    text = "a finite number" + (" " + " and ".join(p for p in parts if p) if any(parts) else "")
    return _Real(low, high, False, False, text)


def interval(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Constraint:
    """A finite number between ``low`` and ``high`` (each end included unless open)."""
    text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return _Real(low, high, low_open, high_open, text)


def one_of(*choices) -> Constraint:
    """One of ``choices`` (of the same type)."""
    return _OneOf(choices)


def one_or_list(inner: Constraint) -> Constraint:
    """A value ``inner`` accepts, or a non-empty list of such values."""
    return _OneOrList(inner)


def optional(inner: Constraint) -> Constraint:
    """``None``, or a value ``inner`` accepts."""
    return _Optional(inner)


#: a finite number > 0 (a learning rate, a temperature, a scale).
positive = _Real(0.0, None, True, False, "a finite number > 0")
#: a finite number >= 0 (an initialization scale).
nonnegative = _Real(0.0, None, False, False, "a finite number >= 0")
#: a number in the half-open interval (0, 1] (a diffusion time).
unit_interval = _Real(0.0, 1.0, True, False, "in (0, 1]")
#: ``True`` or ``False``.
boolean = _Boolean()
#: hidden layer sizes: a list of integers >= 1.
sizes = _Sizes()
#: a non-empty string (a file name, a path).
text = _Text()


def validate(constraints: Mapping[str, Constraint], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check every argument that has a constraint; the normalized values (``int`` → ``float`` for numbers)."""
    return {name: rule(name, values[name]) for name, rule in constraints.items() if name in values}


class CheckedInit:
    """A class whose constructor arguments are checked against the rules its classes declare before any
    ``__init__`` runs (in ``__new__``, against the signature of the class's ``__init__``): a subclass declares
    its rules and calls nothing, and a :class:`ConfigError` names the first bad argument. ``__init__`` itself
    is left as written, so its signature is what LightningCLI, ``--help`` and ``load_from_checkpoint`` read."""

    #: what each constructor argument accepts. A base class's rules apply to its subclasses too (a subclass that
    #: passes ``steps_per_epoch`` on to its base is checked by the base's rule): see :meth:`all_constraints`.
    arg_constraints: ClassVar[dict] = {}

    @classmethod
    def all_constraints(cls) -> dict:
        """The rules of ``cls`` and of its bases, a subclass's rule winning for an argument both name."""
        return {name: rule for klass in reversed(cls.__mro__) for name, rule in vars(klass).get("arg_constraints", {}).items()}

    def __new__(cls, *args, **kwargs):
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError:
            pass  # a wrong call (or copy/pickle's bare __new__): Python's own error comes from __init__
        else:
            validate(cls.all_constraints(), bound.arguments)
        return super().__new__(cls)
