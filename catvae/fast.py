"""The fast training step: forward, estimator, backward and optimizer update as one unit, captured
in a CUDA graph on GPU (one launch per step instead of hundreds of small kernels).

At the VAE's sizes a step is a few small matmuls, so eager PyTorch on a GPU is bound by kernel
launches and Python, not by arithmetic. :class:`StepRunner` runs a whole step function
``step(x) -> dict of tensors`` (which must do its own ``zero_grad``, ``backward`` and optimizer
update) eagerly for ``warmup`` steps, then captures it once with :class:`torch.cuda.CUDAGraph` and
replays it for every later batch. Off CUDA (or with ``capture=False``) it simply calls the function,
so CPU tests exercise everything but the capture itself.

:func:`capture_hazards` is the CPU gate for capture: it runs a step function under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that records every operation a CUDA graph refuses or
silently gets wrong (a tensor made from Python data, a host read, a data-dependent shape, a generator's state
read or a generator made inside the step, optimizer state created lazily), so a step that would fail at
capture on a GPU fails a CPU test first (``tests/test_capture.py``).

:class:`ReplayOptimizer` lets Lightning keep counting steps, logging learning rates and saving the
optimizer in checkpoints while the real update runs inside the captured step.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from callbacks.compat import torch_dispatch_mode
from estimators.base import CategoricalEstimator

TorchDispatchMode = torch_dispatch_mode()

__all__ = ["StepRunner", "ReplayOptimizer", "canonical_device", "capture_hazards"]


def canonical_device(device: torch.device | str) -> torch.device:
    """One spelling per device: ``"cuda"`` is the current CUDA device with its index (``cuda:0``), ``"cpu:0"`` is
    ``cpu``. ``torch.device("cuda") != torch.device("cuda:0")``: anything keyed by a device (the per-run generators
    a captured step registers) must be keyed by this."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.index is None and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


class StepRunner:
    """Run ``step`` eagerly, or through a CUDA graph captured after ``warmup`` eager steps.

    Requirements for capture (checked by PyTorch at capture time): inputs of a fixed shape (use
    ``drop_last`` batching), no host synchronization inside ``step`` (no ``.item()``), and an
    optimizer created with ``capturable=True``.
    """

    def __init__(self, step: Callable[[Tensor], dict[str, Tensor]], capture: bool = True, warmup: int = 3,
                 generators: Callable[[], list] | None = None) -> None:
        self.step, self.capture, self.warmup = step, capture, warmup
        #: the CUDA generators the step draws from besides the default one (``torch.Generator`` objects, e.g. one
        #: per run of a batched group), which the graph must know before capture; a function, called at capture
        self.generators = generators
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_x: Tensor | None = None
        self._static_out: dict[str, Tensor] | None = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        if not (self.capture and x.is_cuda):
            return self.step(x)
        if self.graph is not None and x.shape == self._static_x.shape:
            self._static_x.copy_(x)
            self.graph.replay()
            return {k: v.clone() for k, v in self._static_out.items()}
        if self.calls <= self.warmup or self.graph is not None:  # warm-up, or a batch of another shape
            return self._side_stream(x)
        return self._capture(x)

    def _side_stream(self, x: Tensor) -> dict[str, Tensor]:
        # eager steps before capture run on a side stream, as PyTorch's whole-network capture recipe does
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=x.device)
        self._stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(self._stream):
            out = self.step(x)
        torch.cuda.current_stream(x.device).wait_stream(self._stream)
        return out

    def _capture(self, x: Tensor) -> dict[str, Tensor]:
        self._static_x = x.clone()
        self.graph = torch.cuda.CUDAGraph()
        for generator in self.generators() if self.generators is not None else []:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self._static_out = self.step(self._static_x)
        self.graph.replay()  # capturing does not execute: run this batch's step now
        return {k: v.clone() for k, v in self._static_out.items()}


class ReplayOptimizer(torch.optim.Optimizer):
    """The optimizer Lightning sees when the update happens inside :class:`StepRunner`'s step.

    ``step(closure)`` only calls the closure (which runs the whole step, update included), so that
    Lightning's manual optimization counts the step. It is built with ``Optimizer``'s public constructor on
    the inner optimizer's parameter groups, which ``add_param_group`` keeps as the same dict objects: learning
    rates set through it (schedulers, ``LearningRateMonitor``) are the inner optimizer's. Its state, state
    dict and loaded state are the inner optimizer's. Wrap a freshly built optimizer.
    """

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        super().__init__(inner.param_groups, inner.defaults)

    @property
    def state(self):
        return self.inner.state

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ assigns a fresh empty state: keep the inner one
        if value or not self.inner.state:
            self.inner.state = value

    def step(self, closure=None):
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients are reset inside the step."""

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.inner.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"ReplayOptimizer({self.inner!r})"


# -- the CPU gate for capture ---------------------------------------------------------------------------------
#: ATen operations that a CUDA graph cannot capture (or would replay with a stale value), and the fix
HOSTILE = {
    "lift_fresh": "a tensor made from Python data inside the step (torch.tensor(...)): build it once, outside",
    "lift_fresh_copy": "a tensor made from Python data inside the step (torch.tensor(...)): build it once, outside",
    "_local_scalar_dense": "a host read (.item(), float(), bool(), .tolist()): keep the value on the device",
    "nonzero": "a data-dependent shape (nonzero / boolean indexing): use torch.where or a fixed-size index",
    "masked_select": "a data-dependent shape (masked_select): use torch.where",
    "_unique": "a data-dependent shape (unique)", "_unique2": "a data-dependent shape (unique)",
    "unique_dim": "a data-dependent shape (unique)", "unique_consecutive": "a data-dependent shape (unique)",
    "repeat_interleave": "a data-dependent shape (repeat_interleave): pass output_size or avoid it",
    "equal": "a host read (torch.equal returns a Python bool)",
    "is_nonzero": "a host read (a tensor used as a Python bool)",
}
_ROOT = Path(__file__).resolve().parents[1]
_OURS = ("catvae", "estimators", "callbacks", "tests")


def _where() -> str:
    """The innermost frame of this project's code on the stack (``path:line``), for a hazard's message."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if path.is_relative_to(_ROOT) and path.relative_to(_ROOT).parts[0] in _OURS and path.name != "fast.py":
            return f"{path.relative_to(_ROOT)}:{frame.lineno}"
    return "?"


class _Watch(TorchDispatchMode):
    """Records the hostile operations of the code it runs (``hazards``) and the generators it draws from."""

    def __init__(self) -> None:
        super().__init__()
        self.hazards: list[str] = []
        self.drawn: list[torch.Generator] = []
        self.armed = False

    def hazard(self, what: str) -> None:
        if self.armed:
            self.hazards.append(f"{what} at {_where()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in HOSTILE and not (name == "repeat_interleave" and kwargs.get("output_size") is not None):
            self.hazard(f"aten.{name}: {HOSTILE[name]}")
        if name in ("index", "index_put", "index_put_") and any(
                isinstance(i, Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or []):
            self.hazard(f"aten.{name} with a boolean mask: {HOSTILE['nonzero']}")
        if name in ("_to_copy", "copy_") and self.armed:
            source = args[1] if name == "copy_" else args[0]
            target = args[0].device if name == "copy_" else kwargs.get("device") or args[0].device
            if isinstance(source, Tensor) and source.device.type == "cpu" and torch.device(target).type != "cpu":
                self.hazard(f"aten.{name}: a CPU tensor copied to {target} inside the step: keep it on the device")
        generator = kwargs.get("generator")
        if self.armed and generator is not None:
            self.drawn.append(generator)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _watched_generators(watch: _Watch):
    """``torch.Generator`` and the global generators' state functions replaced by watched ones: a generator made,
    or a state read or set, while ``watch`` is armed is a hazard (CUDA graphs refuse ``get_state`` during
    capture, and a generator made inside the step is not the one registered with the graph)."""
    base = torch.Generator

    class Watched(base):
        def __init__(self, *args, **kwargs) -> None:  # the C type is built in __new__, from the same arguments
            watch.hazard("a torch.Generator made inside the step: make the generators before capture")

        def get_state(self):
            watch.hazard("Generator.get_state inside the step (refused during capture)")
            return super().get_state()

        def set_state(self, state):
            watch.hazard("Generator.set_state inside the step")
            return super().set_state(state)

        def manual_seed(self, seed):
            watch.hazard("Generator.manual_seed inside the step")
            return super().manual_seed(seed)

    def flagged(name: str, fn):
        def wrapped(*args, **kwargs):
            watch.hazard(f"{name} inside the step (a global generator's state)")
            return fn(*args, **kwargs)
        return wrapped

    patched = [(torch, "Generator", Watched)] + [
        (module, name, flagged(f"{prefix}{name}", getattr(module, name)))
        for module, prefix in ((torch, "torch."), (torch.cuda, "torch.cuda."), (torch.random, "torch.random."))
        for name in ("get_rng_state", "set_rng_state", "manual_seed") if hasattr(module, name)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name, value in patched:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> dict:
    if optimizer is None:
        return {}
    return {(id(p), k): v for p, s in optimizer.state.items() for k, v in s.items() if isinstance(v, Tensor)}


def capture_hazards(make: Callable[[], tuple], x: Tensor, warmup: int = 3) -> tuple[list[str], list, list]:
    """What would stop ``step`` from being captured in a CUDA graph, found on any device.

    ``make()`` builds ``(step, optimizer)`` or ``(step, optimizer, generators)`` as a :class:`StepRunner` gets them
    (called with ``torch.Generator`` watched, so the generators the step's model makes are watched too). The step
    runs ``warmup`` times as :class:`StepRunner` runs it before capture; then, as at capture, ``generators()`` is
    called (what the runner registers with the graph) and the step runs once under a dispatch mode that records,
    with the project's line that caused it: a tensor made
    from Python data, a CPU tensor copied to an accelerator, a host read, a data-dependent shape, a generator made
    or its state read or set, and optimizer state that appears or is replaced during the step (it must exist
    after the warm-up). Estimators run as on an accelerator (no logit check, which reads the device).

    Returns ``(hazards, drawn, registered)``: one line per hazard (empty: capture-safe), the generators the watched
    step drew from (as the dispatcher hands them over: new Python wrappers of the same generators) and the
    registered ones."""
    watch = _Watch()
    previous = CategoricalEstimator._default_validate_args
    CategoricalEstimator.set_default_validate_args(False)
    try:
        with _watched_generators(watch):
            step, optimizer, *generators = make()
            for _ in range(warmup):
                step(x)
            registered = list(generators[0]()) if generators and generators[0] is not None else []
            before = _optimizer_tensors(optimizer)
            if optimizer is not None and not before:
                watch.armed = True
                watch.hazard("the optimizer has no state after the warm-up steps")
                watch.armed = False
            with watch:
                watch.armed = True
                step(x)
                watch.armed = False
            after = _optimizer_tensors(optimizer)
            if after.keys() != before.keys() or any(after[k] is not before[k] for k in before):
                watch.hazards.append("optimizer state created or replaced inside the step: create it before capture")
    finally:
        CategoricalEstimator.set_default_validate_args(previous)
    return watch.hazards, watch.drawn, registered
