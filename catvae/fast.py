"""The fast training step: forward, estimator, backward and optimizer update as one unit, captured
in a CUDA graph on GPU (one launch per step instead of hundreds of small kernels).

At the VAE's sizes a step is a few small matmuls, so eager PyTorch on a GPU is bound by kernel
launches and Python, not by arithmetic. :class:`StepRunner` runs a whole step function
``step(x) -> dict of tensors`` (which must do its own ``zero_grad``, ``backward`` and optimizer
update) eagerly for ``warmup`` steps, then captures it once with :class:`torch.cuda.CUDAGraph` and
replays it for every later batch. Off CUDA (or with ``capture=False``) it simply calls the function,
so CPU tests exercise everything but the capture itself.

:class:`ReplayOptimizer` lets Lightning keep counting steps, logging learning rates and saving the
optimizer in checkpoints while the real update runs inside the captured step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["StepRunner", "ReplayOptimizer"]


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
