r"""Many categorical VAEs trained as one stacked model (``catvae compare --batched``).

``R`` runs of one architecture — any mix of estimators, estimator hyperparameters and seeds — share one
process and one optimizer step: every weight of :class:`~catvae.CategoricalVAE` becomes a tensor with a
leading run dimension (``[R, out, in]``), and each layer is one batched matmul
``h_r ↦ h_r W_rᵀ + b_r`` (``torch.baddbmm``) over all runs. At the VAE's sizes one run is a few hundred small
kernels, far too little work for a GPU; ``R`` runs stacked are the same number of kernels doing ``R`` times
the work.

What stays per run, so that every run trains as it would alone:

* its data order (its own :class:`~catvae.data.loader.TensorBatches`, stacked by
  :class:`~catvae.data.loader.StackedBatches`);
* its noise: run ``r``'s estimator and exact draws come from run ``r``'s own state of the global
  generators (:class:`RunStreams`), started where ``catvae fit`` would start it (the state after building
  the run's model under its seed). Each estimator is called on its run's ``[B, L, K]`` slice of the
  logits, so its samples are those of the single-run path given the same logits, whatever the other runs do;
* its estimator (a module per run; the model reads only capability flags: ``pathwise``, ``exact_draws``).

The objective is the sum of the runs' batch-mean negative ELBOs, whose gradient with respect to run
``r``'s slice is exactly run ``r``'s gradient; Adam is elementwise, so one Adam over the stacked tensors
is one Adam per run. The whole step therefore depends on run ``r``'s inputs alone (the equivalence tests:
``tests/test_batched.py``).

Per-run outputs (TensorBoard scalars with the single-run tags, per-run checkpoints) are written by
:mod:`catvae.compare.batched`; this module keeps the per-run epoch sums as buffers (so a group checkpoint
resumes them) and hands finished values to its ``writer``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from estimators.base import ConfigError, NonFiniteLogitsError
from estimators.functional import log_softmax, sample_one_hot, softmax
from estimators.rng import seeded

from ..errors import TrainingDiverged
from ..fast import ReplayOptimizer, StepRunner
from .vae import CategoricalVAE, bernoulli_nll

__all__ = ["ARCHITECTURE", "RunStreams", "StackedVAE", "run_slice"]

#: the hyperparameters every run of a stack shares (the model's shape and its optimizer)
ARCHITECTURE = ("latent_dim", "n_categories", "encoder_hidden", "decoder_hidden", "activation", "lr", "image_size",
                "exact_nelbo_every_n_steps", "optimizer", "lr_scheduler", "fast_step")


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cuda_seed(state: dict[str, Tensor]) -> int:
    """The seed of a run's CUDA stream when it has none yet (a run built without CUDA): drawn from a copy of its
    CPU stream, which stays where it is."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().set_state(state["torch"])))


class RunStreams:
    """One random stream per run: inside ``with streams.run(r, device)`` the global generators (CPU, and
    ``device`` when it is a CUDA device) hold run ``r``'s state, which is kept for its next draws; the
    caller's state is restored afterwards. Code that draws from the global generator (every estimator,
    :func:`~estimators.functional.sample_one_hot`) thus draws run ``r``'s numbers, exactly as it would in a
    single-run process whose generator had that state. A run without a CUDA state yet gets one seeded from
    its CPU stream the first time it draws on a GPU.

    For a step captured in a CUDA graph (:meth:`graph_generators`), each run's CUDA stream is a generator
    state object that the step swaps into the device's default generator with ``graphsafe_set_state``
    (PyTorch >= 2.5), which capture allows and replay advances, instead of copying states in and out (which
    capture forbids). Both hold the same Philox seed and offset: a captured step draws the numbers of the
    eager one.
    """

    def __init__(self, states: Sequence[dict[str, Tensor]]) -> None:
        self._states = [dict(s) for s in states]
        self._graph: list | None = None  # per-run CUDA generator states, once switched to graph-safe swapping
        self._default = None

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> list[dict[str, Tensor]]:
        """Every run's current state (``{"torch": ..., "cuda": ...}``, byte tensors: what a checkpoint holds)."""
        if self._graph is not None:
            for state, gen in zip(self._states, self._graph):
                state["cuda"] = gen.get_state()
        return self._states

    def run(self, r: int, device: torch.device):
        return _RunStream(self, r, device)

    def graph_generators(self, device: torch.device) -> list:
        """Switch the CUDA streams of ``device`` to graph-safe generator states (once) and return them, for
        :class:`~catvae.fast.StepRunner` to register with the graph before capture."""
        if self._graph is None:
            default = torch.cuda.default_generators[device.index if device.index is not None else 0]
            if not hasattr(default, "graphsafe_set_state"):
                raise ConfigError(f"capturing a batched step needs PyTorch >= 2.5 (graph-safe generator states), "
                                  f"this is {torch.__version__}: drop --model.init_args.fast_step")
            gens = []
            for state in self.states:
                gen = default.clone_state()
                if "cuda" in state:
                    gen.set_state(state["cuda"])
                else:
                    gen.manual_seed(_cuda_seed(state))
                gens.append(gen)
            self._graph, self._default = gens, default
        return self._graph


class _RunStream:
    def __init__(self, streams: RunStreams, r: int, device: torch.device) -> None:
        self.streams, self.r, self.device = streams, r, device

    def __enter__(self) -> None:
        streams = self.streams
        if streams._graph is not None and self.device.type == "cuda":
            self.saved = streams._default.graphsafe_get_state()
            streams._default.graphsafe_set_state(streams._graph[self.r])
            return
        self.saved = _rng_state(self.device)
        state = streams._states[self.r]
        _set_rng_state(state, self.device)
        if self.device.type == "cuda" and "cuda" not in state:
            torch.cuda.manual_seed(_cuda_seed(state))

    def __exit__(self, *exc) -> None:
        streams = self.streams
        if streams._graph is not None and self.device.type == "cuda":
            streams._default.graphsafe_set_state(self.saved)
            return
        streams._states[self.r] = _rng_state(self.device)
        _set_rng_state(self.saved, self.device)


class StackedVAE(L.LightningModule):
    """``R`` :class:`~catvae.CategoricalVAE` runs as one LightningModule (module docstring).

    Args:
        models: the runs, as built by ``catvae fit`` (their initial weights and estimators are taken); they
            must agree on :data:`ARCHITECTURE`.
        rng_states: each run's starting noise state (``{"torch": ..., "cuda": ...}``), default the
            current global state for every run.
        writer: ``writer(r, metrics, step)`` receives run ``r``'s finished scalars (the single-run tags); by
            default they are dropped.

    The parameters are ``stacked.<i>``, the ``i``-th parameter of the runs' ``CategoricalVAE`` stacked on a
    new first dimension, Linear weights transposed to ``[R, in, out]`` so that each layer is
    ``baddbmm(b, h, W)`` on contiguous operands (with ``nn.Linear``'s ``[out, in]`` the CPU batched matmul
    ran 20-25 % slower than the runs' own ``addmm``, forward and backward; transposed it is as fast, measured
    on docs/performance.md's CPU). :meth:`run_state_dict` gives run ``r``'s back under its own names and layout.
    """

    def __init__(self, models: Sequence[CategoricalVAE], rng_states: Sequence[dict] | None = None,
                 writer: Callable[[int, dict[str, float], int], None] | None = None) -> None:
        super().__init__()
        if not models:
            raise ConfigError("a stacked model needs at least one run")
        first = models[0]
        for j, m in enumerate(models):
            if not isinstance(m, CategoricalVAE):
                raise ConfigError(f"--batched stacks CategoricalVAE runs only; run {j} is a {type(m).__name__}")
            differ = [k for k in ARCHITECTURE if m.hparams.get(k) != first.hparams.get(k)]
            if differ:
                raise ConfigError(f"the runs of a batched group must share {', '.join(differ)}: run {j} has "
                                  f"{differ[0]}={m.hparams.get(differ[0])!r}, run 0 {first.hparams.get(differ[0])!r}; "
                                  "put them in different settings")
        if first.hparams.get("optimizer") is not None or first.hparams.get("lr_scheduler") is not None:
            raise ConfigError("--batched trains with the default Adam(lr) and a constant learning rate: drop "
                              "--model.init_args.optimizer / lr_scheduler, or run without --batched")
        self.R = len(models)
        self.latent_dim, self.n_categories = first.latent_dim, first.n_categories
        self.exact_every = first.hparams.exact_nelbo_every_n_steps
        self.lr = first.hparams.lr
        self.eval_seed = first.eval_seed
        self.estimators = nn.ModuleList([m.estimator for m in models])
        self.names = [name for name, _ in first.named_parameters()]
        #: the parameters stored transposed (the Linear weights: ``[R, in, out]``, see the class docstring)
        self.transposed = [p.dim() == 2 for _, p in first.named_parameters()]
        self.stacked = nn.ParameterList(
            [nn.Parameter(torch.stack([_layout(dict(m.named_parameters())[n].detach(), t) for m in models]).contiguous())
             for n, t in zip(self.names, self.transposed)])
        self.encoder_layers = self._layers(first.encoder, "encoder.")
        self.decoder_layers = self._layers(first.decoder, "decoder.")
        self.register_buffer("exact_mask", torch.tensor([est.exact_draws for est in self.estimators]), persistent=False)
        #: the step at which each run diverged (-1: it did not); a diverged run is left out of the objective and
        #: of the outputs, the others go on (their computations never read its numbers)
        self.register_buffer("diverged_at", torch.full((self.R,), -1, dtype=torch.long))
        self._dead: set[int] = set()
        self.fast_step = bool(first.hparams.fast_step)
        if self.fast_step:
            self.automatic_optimization = False
            self._runner = None
        self.streams = RunStreams(rng_states or [_rng_state(torch.device("cpu"))] * self.R)
        self.writer = writer
        for name in ("train_loss_sum", "train_exact_sum", "val_sum"):
            self.register_buffer(name, torch.zeros(self.R))
        for name in ("train_weight", "train_exact_weight", "val_weight"):
            self.register_buffer(name, torch.zeros(()))
        self._epoch_t0: float | None = None

    def _layers(self, seq: nn.Sequential, prefix: str) -> list[tuple[int, int, nn.Module | None]]:
        """``(weight index, bias index, activation after it or None)`` of each Linear of ``seq``."""
        out = []
        modules = list(seq)
        for i, module in enumerate(modules):
            if isinstance(module, nn.Linear):
                act = modules[i + 1] if i + 1 < len(modules) and not isinstance(modules[i + 1], nn.Linear) else None
                out.append((self.names.index(f"{prefix}{i}.weight"), self.names.index(f"{prefix}{i}.bias"), act))
        return out

    # -- the stacked networks ----------------------------------------------------------------------
    def _mlp(self, layers, h: Tensor) -> Tensor:
        """All runs: ``h [R, N, in] -> [R, N, out]``, one ``baddbmm`` per layer."""
        for w, b, act in layers:
            h = torch.baddbmm(self.stacked[b].unsqueeze(1), h, self.stacked[w])
            if act is not None:
                h = act(h)
        return h

    def _mlp_run(self, layers, r: int, h: Tensor) -> Tensor:
        """Run ``r`` alone: ``h [..., in] -> [..., out]`` with its slice of every weight."""
        for w, b, act in layers:
            h = torch.matmul(h, self.stacked[w][r]) + self.stacked[b][r]
            if act is not None:
                h = act(h)
        return h

    def encode(self, x: Tensor) -> Tensor:
        """Posterior logits of every run, ``x [R, B, D] -> [R, B, L, K]``."""
        return self._mlp(self.encoder_layers, x).view(self.R, x.shape[1], self.latent_dim, self.n_categories)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits of every run, ``z [R, B, L, K] -> [R, B, D]``."""
        return self._mlp(self.decoder_layers, z.flatten(-2))

    def kl(self, logits: Tensor) -> Tensor:
        """``Σ_l KL(q_l ‖ Uniform(K))`` per example (as :meth:`CategoricalVAE.kl`)."""
        log_q = log_softmax(logits)
        return (log_q.exp() * (log_q + math.log(self.n_categories))).sum(dim=(-1, -2))

    def _run_objective(self, r: int, x: Tensor, kl: Tensor) -> Callable[[Tensor], Tensor]:
        """Run ``r``'s negative ELBO of samples ``[*lead, B, L, K]`` (for an estimator's ``surrogate``)."""
        return lambda z: bernoulli_nll(self._mlp_run(self.decoder_layers, r, z.flatten(-2)), x) + kl

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each run's training objective (batch mean of the negative ELBO of its estimator's samples, carrying
        its estimator's gradient), ``[R]``, and the posterior logits ``[R, B, L, K]``."""
        logits = self.encode(x)
        kl = self.kl(logits)
        samples, surrogate = [], {}
        # unbind, not logits[r]: one backward node for all runs (R selects would each fill a full-size zero gradient,
        # R² work: 0.62 s of a 1 s step at R = 21, L = 32, K = 64 on CPU, measured)
        per_run, kl_run = logits.unbind(0), kl.unbind(0)
        for r, est in enumerate(self.estimators):
            if r in self._dead:  # its logits are not finite: no estimator call (its stream stays where it stopped)
                samples.append(torch.zeros_like(per_run[r]))
                continue
            try:
                with self.streams.run(r, logits.device):
                    if est.pathwise:
                        samples.append(est(per_run[r]))
                    else:  # a score-function estimator needs the objective: run r's decoder alone
                        surrogate[r] = est.surrogate(per_run[r], self._run_objective(r, x[r], kl_run[r])).mean()
                        samples.append(torch.zeros_like(per_run[r]))
            except NonFiniteLogitsError:  # the estimator's own check (CPU), before it drew anything
                self._mark_diverged([r], self.global_step, "its posterior logits became non-finite")
                samples.append(torch.zeros_like(per_run[r]))
        nelbo = bernoulli_nll(self.decode(torch.stack(samples)), x) + kl  # [R, B]
        losses = nelbo.mean(dim=1)
        if surrogate:
            losses = torch.stack([surrogate.get(r, losses[r]) for r in range(self.R)])
        return losses, logits

    @torch.no_grad()
    def exact_means(self, x: Tensor, logits: Tensor, losses: Tensor) -> Tensor:
        """Each run's batch-mean negative ELBO with an exact draw ``Z ~ q(z|x)`` (``train/nelbo_exact``),
        ``[R]``: its training loss where its estimator draws exactly (``exact_draws``, no second draw, as in
        :meth:`CategoricalVAE._nelbo_exact`), else a second draw from its stream through its decoder."""
        exact = [est.exact_draws for est in self.estimators]
        if all(exact):
            return losses.detach()
        samples = []
        for r in range(self.R):
            if exact[r] or r in self._dead:
                samples.append(torch.zeros_like(logits[r]))
                continue
            with self.streams.run(r, logits.device):
                samples.append(sample_one_hot(softmax(logits[r])))
        means = (bernoulli_nll(self.decode(torch.stack(samples)), x) + self.kl(logits)).mean(dim=1)
        return torch.where(self.exact_mask, losses.detach(), means)

    def objective(self, losses: Tensor) -> Tensor:
        """What the step minimizes: the sum of the runs' losses, diverged runs left out (gradient 0)."""
        return torch.where(self.diverged_at < 0, losses, torch.zeros_like(losses)).sum()

    def _mark_diverged(self, runs: list[int], step: int, what: str) -> None:
        """Leave ``runs`` out from now on (their numbers are not finite), warn, and stop when no run is left."""
        for r in runs:
            self.diverged_at[r] = step
            self._dead.add(r)
            print(f"catvae: run {r} of the group ({self.estimators[r].name}) diverged: {what} at step {step}; the "
                  "other runs go on", file=sys.stderr, flush=True)
        if len(self._dead) == self.R:
            raise TrainingDiverged(f"every run of the group diverged ({what} by step {step}); the last good state is "
                                   "the group's last.ckpt")

    def make_step(self, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], dict[str, Tensor]]:
        """The whole training step of every run on a batch ``[R, B, D]`` as one function (``zero_grad``, forward,
        estimators, exact NELBOs unless ``exact_nelbo_every_n_steps`` is 0, backward, ``optimizer``'s update),
        returning the runs' ``loss`` and ``nelbo_exact`` (``[R]``) without reading them back: what
        :class:`~catvae.fast.StepRunner` captures in a CUDA graph (``fast_step``), and what ``catvae bench sweep``
        times."""

        def step(x: Tensor) -> dict[str, Tensor]:
            optimizer.zero_grad(set_to_none=True)
            losses, logits = self.losses(x)
            out = {"loss": losses.detach()}
            if self.exact_every:
                out["nelbo_exact"] = self.exact_means(x, logits.detach(), losses)
            self.objective(losses).backward()
            optimizer.step()
            return out

        return step

    # -- Lightning ----------------------------------------------------------------------------------
    def training_step(self, x: Tensor, batch_idx: int) -> Tensor | None:
        step = self.global_step
        due = self.exact_every and step % self.exact_every == 0
        if self.fast_step:
            out = self._fast_training_step(x)
            losses = out["loss"]
            exact = out.get("nelbo_exact") if due else None
        else:
            losses, logits = self.losses(x)
            exact = self.exact_means(x, logits.detach(), losses) if due else None
        if losses.device.type == "cpu":  # one host read per step, as the single-run path's check
            alive = torch.where(self.diverged_at < 0, losses.detach(), torch.zeros_like(losses))
            if not math.isfinite(float(alive.sum())):
                finite = torch.isfinite(alive).tolist()
                self._mark_diverged([r for r in range(self.R) if not finite[r]], step, "its training loss became "
                                    f"{float(losses[finite.index(False)])}")
        B = x.shape[1]
        self.train_loss_sum += losses.detach() * B
        self.train_weight += B
        if exact is not None:
            self.train_exact_sum += exact * B
            self.train_exact_weight += B
        every = self.trainer.log_every_n_steps
        if every and (step + 1) % every == 0:
            self._write({"train/loss_step": losses.detach()}, step)
        return None if self.fast_step else self.objective(losses)

    def _fast_training_step(self, x: Tensor) -> dict[str, Tensor]:
        if self._runner is None:
            cuda = self.device.type == "cuda"
            self._runner = StepRunner(self.make_step(self._step_optimizer),
                                      generators=(lambda: self.streams.graph_generators(self.device)) if cuda else None)
        out: dict[str, Tensor] = {}
        self.optimizers().step(closure=lambda: out.update(self._runner(x)))
        return out

    def _write(self, values: dict[str, Tensor], step: int) -> None:
        """Hand each run its values (one host read for all runs)."""
        if self.writer is None:
            return
        table = {k: v.tolist() for k, v in values.items()}
        for r in range(self.R):
            if r in self._dead:
                continue
            self.writer(r, {k: v[r] if isinstance(v, list) else v for k, v in table.items()}, step)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_start(self) -> None:
        self._epoch_t0 = None  # an epoch resumed in the middle has no start in this process

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = self._now()

    def on_train_epoch_end(self) -> None:
        step = self.global_step - 1
        if float(self.train_weight) > 0:
            values = {"train/loss_epoch": self.train_loss_sum / self.train_weight}
            if float(self.train_exact_weight) > 0:
                values["train/nelbo_exact"] = self.train_exact_sum / self.train_exact_weight
            if self._epoch_t0 is not None:
                # the group's epoch time shared by its runs: each run's amortized cost, comparable across group sizes
                values["time/epoch_s"] = torch.full((self.R,), (self._now() - self._epoch_t0) / self.R)
            self._write(values, step)
        for name in ("train_loss_sum", "train_exact_sum", "train_weight", "train_exact_weight"):
            getattr(self, name).zero_()

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        xs = x.unsqueeze(0).expand(self.R, *x.shape)
        logits = self.encode(xs)
        samples = []
        for r in range(self.R):  # each run's draws as the single-run path's (CategoricalVAE.eval_rng)
            with seeded(self.eval_seed + batch_idx, self.device):
                samples.append(sample_one_hot(softmax(logits[r])))
        nelbo = bernoulli_nll(self.decode(torch.stack(samples)), xs) + self.kl(logits)
        self.val_sum += nelbo.sum(dim=1)
        self.val_weight += x.shape[0]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and float(self.val_weight) > 0:
            self._write({"val/nelbo": self.val_sum / self.val_weight,
                         "val/n_examples": self.val_weight.expand(self.R)}, self.global_step - 1)
        self.val_sum.zero_()
        self.val_weight.zero_()

    def configure_optimizers(self):
        """One Adam over the stacked tensors (elementwise: one Adam per run), fused as
        :meth:`catvae.core.EstimatorTask.adam`; with ``fast_step``, capturable on a GPU and run inside the
        captured step (:class:`~catvae.fast.ReplayOptimizer`)."""
        capturable = self.fast_step and self.device.type == "cuda"
        fused = not capturable and self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, fused=fused or None, capturable=capturable)
        if not self.fast_step:
            return optimizer
        self._step_optimizer, self._runner = optimizer, None  # a new fit: the captured step must use this one
        return ReplayOptimizer(optimizer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        finite = torch.ones(self.R, dtype=torch.bool, device=self.device)
        for param in self.stacked:
            finite &= torch.isfinite(param).flatten(1).all(dim=1)
        bad = [r for r in (~finite).nonzero().flatten().tolist() if r not in self._dead]
        if bad:  # found here on a GPU, where no step reads the loss back
            self._mark_diverged(bad, self.global_step, "a parameter became non-finite")
            checkpoint["state_dict"]["diverged_at"] = self.diverged_at.detach().clone().cpu()
        checkpoint["catvae_streams"] = [dict(s) for s in self.streams.states]
        checkpoint["catvae_task"] = {"class": type(self).__qualname__, "runs": self.R,
                                     "estimators": [est.name for est in self.estimators],
                                     "transposed": list(self.transposed)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        task = checkpoint.get("catvae_task") or {}
        if task.get("class") != type(self).__qualname__ or task.get("runs") != self.R:
            raise ConfigError(f"the group checkpoint holds {task.get('runs')} runs of {task.get('class')}, not "
                              f"{self.R} of {type(self).__qualname__}: delete the group's folder to start it over")
        self.streams = RunStreams(checkpoint["catvae_streams"])
        diverged = checkpoint["state_dict"].get("diverged_at")
        self._dead = set() if diverged is None else {r for r, step in enumerate(diverged.tolist()) if step >= 0}

    def run_state_dict(self, r: int, state_dict: dict | None = None) -> dict[str, Tensor]:
        """Run ``r``'s parameters under the names of :class:`CategoricalVAE` (from ``state_dict``, a saved
        group state, or the live parameters)."""
        source = state_dict if state_dict is not None else self.state_dict()
        return {n: run_slice(source[f"stacked.{i}"], r, t) for i, (n, t) in enumerate(zip(self.names, self.transposed))}


def _layout(param: Tensor, transposed: bool) -> Tensor:
    return param.t() if transposed else param


def run_slice(stacked: Tensor, r: int, transposed: bool) -> Tensor:
    """Run ``r``'s tensor (a parameter, or an optimizer moment of one) in :class:`CategoricalVAE`'s layout."""
    return stacked[r].t().contiguous() if transposed else stacked[r].clone()
