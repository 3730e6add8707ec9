r"""Many categorical VAEs trained as one stacked model (``catvae compare --batched``).

``R`` runs of one architecture — any mix of estimators, estimator hyperparameters and seeds — share one
process and one optimizer step: every weight of :class:`~catvae.CategoricalVAE` becomes a tensor with a
leading run dimension (``[R, in, out]``), and each layer is one batched matmul
``h_r ↦ h_r W_rᵀ + b_r`` (``torch.baddbmm``) over all runs. At the VAE's sizes one run is a few hundred small
kernels, far too little work for a GPU; ``R`` runs stacked are the same number of kernels doing ``R`` times
the work.

What stays per run, so that every run trains as it would alone:

* its data order (its own :class:`~catvae.data.loader.TensorBatches`, stacked by
  :class:`~catvae.data.loader.StackedBatches`);
* its noise: run ``r``'s estimator and exact draws come from run ``r``'s own generator (:class:`RunStreams`),
  started where ``catvae fit`` would start drawing (the global state after building the run's model under its
  seed). Consecutive runs with the same estimator (class and hyperparameters) are one estimator call on their
  stacked ``[n, B, L, K]`` logits, inside :func:`estimators.rng.streams`, which draws each run's part of the
  noise from its own generator in the single-run order: each run's samples are those of the single-run path
  given the same logits, whatever the other runs are;
* its estimator (a module per run; the model reads only capability flags: ``pathwise``, ``exact_draws``; a
  score-function estimator is called for its run alone, with that run's objective).

The objective is the sum of the runs' batch-mean negative ELBOs, whose gradient with respect to run
``r``'s slice is exactly run ``r``'s gradient; Adam is elementwise, so one Adam over the stacked tensors
is one Adam per run. The whole step therefore depends on run ``r``'s inputs alone (the equivalence tests:
``tests/test_batched.py``).

The model is :class:`~catvae.models.vae.CategoricalVAE`'s: its networks are the runs' MLPs stacked
(:func:`~catvae.models.vae.stack_mlps`, each ``nn.Linear`` a :class:`~catvae.models.vae.RunLinear` under the
same name), and encoding, the NELBO and the importance-weighted log-likelihood are the one definition of
:class:`~catvae.models.vae.VAEMath` on a leading run dimension. What is here is what a group adds: the runs'
noise streams, estimator blocks, divergence bookkeeping and per-run outputs.

Per-run outputs (TensorBoard scalars with the single-run tags, per-run checkpoints) are written by
:mod:`catvae.compare.batched`; this module keeps the per-run epoch means as :class:`~catvae.metrics.StepMean`
of ``R`` values (persistent, so a group checkpoint resumes them) and hands finished values to its ``writer``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from estimators import rng
from estimators.base import ConfigError, NonFiniteLogitsError
from estimators.functional import sample_one_hot, softmax

from ...core import adam
from ...errors import TrainingDiverged
from ...fast import ReplayOptimizer, StepRunner, canonical_device
from ...metrics import StepMean, step_means
from .model import CategoricalVAE, VAEMath, bernoulli_nll, kl_to_uniform, linear_layout, run_mlp, stack_mlps

__all__ = ["ARCHITECTURE", "RunStreams", "StackedVAE", "run_slice", "upgrade_group_checkpoint"]

#: the hyperparameters every run of a stack shares (the model's shape and its optimizer)
ARCHITECTURE = ("latent_dim", "n_categories", "encoder_hidden", "decoder_hidden", "activation", "lr", "image_shape",
                "exact_nelbo_every_n_steps", "optimizer", "lr_scheduler", "fast_step", "n_importance_samples",
                "importance_chunk")


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _cuda_seed(state: dict[str, Tensor]) -> int:
    """The seed of a run's CUDA stream when it has none yet (a run built without CUDA): drawn from a copy of its
    CPU stream, which stays where it is."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().set_state(state["torch"])))


def _key(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "torch"


class RunStreams:
    """One random stream per run: a ``torch.Generator`` per run on the device the runs train on, started from the
    run's state (``{"torch": CPU state, "cuda": CUDA state}``, the global generators' states where ``catvae fit``
    would start drawing), for :func:`estimators.rng.streams`. Run ``r``'s draws then are the numbers a single-run
    process draws from its global generator in that state. A run without a CUDA state gets one seeded from its
    CPU stream. On a GPU the generators are what a captured step registers with its CUDA graph (so replays
    advance them)."""

    def __init__(self, states: Sequence[dict[str, Tensor]]) -> None:
        self._states = [dict(s) for s in states]
        self._gens: list[torch.Generator] | None = None
        self._device: torch.device | None = None

    def __len__(self) -> int:
        return len(self._states)

    def generators(self, device: torch.device | str) -> list[torch.Generator]:
        """The runs' generators on ``device`` (made once per device, continuing the saved states; every spelling of
        one device, ``cuda`` or ``cuda:0``, gets the same generators: :func:`~catvae.fast.canonical_device`)."""
        device = canonical_device(device)
        if self._gens is None or device != self._device:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"the runs' generators on {device} were first asked for during CUDA-graph capture: "
                                   "make them before capture (the step's generators must be the registered ones)")
            self._sync()
            key = _key(device)
            gens = []
            for state in self._states:
                gen = torch.Generator(device=device)
                if key in state:
                    gen.set_state(state[key])
                else:
                    gen.manual_seed(_cuda_seed(state))
                gens.append(gen)
            self._gens, self._device = gens, device
        return self._gens

    def _sync(self) -> None:
        if self._gens is not None:
            for state, gen in zip(self._states, self._gens):
                state[_key(self._device)] = gen.get_state()

    @property
    def states(self) -> list[dict[str, Tensor]]:
        """Every run's current state (byte tensors: what a checkpoint holds)."""
        self._sync()
        return self._states


def _blocks(estimators, dead: set[int]) -> list[tuple[int, int, str]]:
    """The runs cut into consecutive blocks ``(start, end, kind)`` that one call serves: ``dead`` (a diverged
    run, alone), ``score`` (a score-function estimator: its objective is its run's own, so alone), or
    ``pathwise`` (runs whose estimators are the same class with the same hyperparameters: one call on their
    stacked logits, each run's noise from its own stream)."""
    out: list[tuple[int, int, str]] = []
    for r, est in enumerate(estimators):
        kind = "dead" if r in dead else ("pathwise" if est.pathwise else "score")
        if out and kind == "pathwise" and out[-1][2] == "pathwise" and _same(estimators[out[-1][0]], est):
            out[-1] = (out[-1][0], r + 1, kind)
        else:
            out.append((r, r + 1, kind))
    return out


def _same(a, b) -> bool:
    return type(a) is type(b) and a.hparams() == b.hparams()


class StackedVAE(VAEMath, L.LightningModule):
    """``R`` :class:`~catvae.CategoricalVAE` runs as one LightningModule (module docstring).

    Args:
        models: the runs, as built by ``catvae fit`` (their initial weights and estimators are taken); they
            must agree on :data:`ARCHITECTURE`.
        rng_states: each run's starting noise state (``{"torch": ..., "cuda": ...}``), default the
            current global state for every run.
        writer: ``writer(r, metrics, step)`` receives run ``r``'s finished scalars (the single-run tags); by
            default they are dropped.

    The parameters have the names of :class:`CategoricalVAE`'s (``encoder.0.weight``, ...), each the runs' tensors
    stacked on a new first dimension, Linear weights transposed to ``[R, in, out]``
    (:class:`~catvae.models.vae.RunLinear`). :meth:`run_state_dict` gives run ``r``'s back in its own layout.
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
        self.encoder = stack_mlps([m.encoder for m in models])
        self.decoder = stack_mlps([m.decoder for m in models])
        self.n_importance_samples, self.importance_chunk = (first.hparams.n_importance_samples,
                                                            first.hparams.importance_chunk)
        self.register_buffer("exact_mask", torch.tensor([est.exact_draws for est in self.estimators]), persistent=False)
        #: the step at which each run diverged (-1: it did not); a diverged run is left out of the objective and
        #: of the outputs, the others go on (their computations never read its numbers)
        self.register_buffer("diverged_at", torch.full((self.R,), -1, dtype=torch.long))
        self._dead: set[int] = set()
        self._blocks: list[tuple[int, int, str]] | None = None
        self._drawn_index: tuple[list[int], Tensor] | None = None
        self.fast_step = bool(first.hparams.fast_step)
        if self.fast_step:
            self.automatic_optimization = False
            self._runner = None
        self.streams = RunStreams(rng_states or [_rng_state(torch.device("cpu"))] * self.R)
        self.writer = writer
        # the runs' epoch means, in the group checkpoint (a resumed epoch goes on with its sums) ...
        self.train_loss, self.train_nelbo_exact, self.val_nelbo = (StepMean(runs=self.R) for _ in range(3))
        for metric in (self.train_loss, self.train_nelbo_exact, self.val_nelbo):
            metric.persistent(True)
        # ... and the test's, reset by every test, never in a checkpoint
        self.test_nelbo, self.test_ll = StepMean(runs=self.R), StepMean(runs=self.R)
        self._epoch_t0: float | None = None

    def _run_objective(self, r: int, x: Tensor, kl: Tensor) -> Callable[[Tensor], Tensor]:
        """Run ``r``'s negative ELBO of samples ``[*lead, B, L, K]`` (for an estimator's ``surrogate``)."""
        return lambda z: bernoulli_nll(run_mlp(self.decoder, r, z.flatten(-2)), x) + kl

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each run's training objective (batch mean of the negative ELBO of its estimator's samples, carrying
        its estimator's gradient), ``[R]``, and the posterior logits ``[R, B, L, K]``.

        The estimators run by blocks of consecutive runs with the same estimator (:func:`_blocks`): one call on
        the block's logits ``[n, B, L, K]`` under :func:`estimators.rng.streams` of the block's runs."""
        logits = self.encode(x)
        kl = kl_to_uniform(logits)
        gens = self.streams.generators(logits.device)
        blocks = self._block_list()
        # split, not logits[a:b]: one backward node for all blocks (a slice per run or block fills a full-size zero
        # gradient each: 0.62 s of a 1 s step at R = 21, L = 32, K = 64 on CPU with per-run slices, measured)
        parts = logits.split([b - a for a, b, _ in blocks])
        samples, surrogate = [], {}

        def call(a: int, b: int, kind: str, part: Tensor) -> Tensor:
            if kind == "dead":  # its logits are not finite: no estimator call (its stream stays where it stopped)
                return torch.zeros_like(part)
            with rng.streams(gens[a:b]):
                if kind == "pathwise":
                    return self.estimators[a](part)
                # a score-function estimator needs the objective: its run's decoder alone
                surrogate[a] = self.estimators[a].surrogate(part[0], self._run_objective(a, x[a], kl[a])).mean()
                return torch.zeros_like(part)

        for (a, b, kind), part in zip(blocks, parts):
            try:
                samples.append(call(a, b, kind, part))
            except NonFiniteLogitsError:  # the estimator's own check (CPU), before the block drew anything
                bad = [r for r in range(a, b) if not bool(torch.isfinite(logits[r].detach()).all())]
                self._mark_diverged(bad, self.global_step, "its posterior logits became non-finite")
                samples += [call(r, r + 1, "dead" if r in self._dead else kind, part[r - a : r - a + 1])
                            for r in range(a, b)]
        losses = (self.reconstruction(x, torch.cat(samples)) + kl).mean(dim=1)
        if surrogate:
            losses = torch.stack([surrogate.get(r, losses[r]) for r in range(self.R)])
        return losses, logits

    def _block_list(self) -> list[tuple[int, int, str]]:
        if self._blocks is None:
            self._blocks = _blocks(self.estimators, self._dead)
            self._drawn_index = None
        return self._blocks

    def _drawn(self, device: torch.device) -> tuple[list[int], Tensor | None]:
        """The runs whose ``train/nelbo_exact`` needs a second, exact draw (not ``exact_draws``, not diverged) and
        their index on ``device`` (``None`` when it is every run). Cached with the blocks, so that a step that reuses
        it builds no tensor from Python data (a captured step cannot: ``catvae.fast.capture_hazards``)."""
        self._block_list()
        if self._drawn_index is None or self._drawn_index[1].device != device:
            drawn = [r for r, est in enumerate(self.estimators) if not est.exact_draws and r not in self._dead]
            self._drawn_index = (drawn, torch.tensor(drawn, dtype=torch.long, device=device))
        drawn, index = self._drawn_index
        return drawn, (index if len(drawn) < self.R else None)

    def prepare_step(self, device: torch.device) -> None:
        """Build what the step reuses (blocks, the exact-draw index, the runs' generators) before it is captured."""
        self._drawn(device)
        self.streams.generators(device)

    @torch.no_grad()
    def exact_means(self, x: Tensor, logits: Tensor, losses: Tensor) -> Tensor:
        """Each run's batch-mean negative ELBO with an exact draw ``Z ~ q(z|x)`` (``train/nelbo_exact``),
        ``[R]``: its training loss where its estimator draws exactly (``exact_draws``, no second draw, as in
        :meth:`CategoricalVAE._nelbo_exact`), else a second draw from its stream through its decoder (one draw
        for all those runs)."""
        drawn, index = self._drawn(logits.device)
        if not drawn:
            return losses.detach()
        gens = self.streams.generators(logits.device)
        with rng.streams([gens[r] for r in drawn]):
            z = sample_one_hot(softmax(logits if index is None else logits.index_select(0, index)))
        if index is not None:
            z = torch.zeros_like(logits).index_copy_(0, index, z)
        means = self.nelbo(x, z, logits).mean(dim=1)
        return torch.where(self.exact_mask, losses.detach(), means)

    def objective(self, losses: Tensor) -> Tensor:
        """What the step minimizes: the sum of the runs' losses, diverged runs left out (gradient 0)."""
        return self._alive(losses).sum()

    def _alive(self, losses: Tensor) -> Tensor:
        """``losses`` with 0 for the diverged runs."""
        return torch.where(self.diverged_at < 0, losses, torch.zeros_like(losses))

    def _mark_diverged(self, runs: list[int], step: int, what: str) -> None:
        """Leave ``runs`` out from now on (their numbers are not finite), warn, and stop when no run is left."""
        self._blocks = None
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
            alive = self._alive(losses.detach())
            if not math.isfinite(float(alive.sum())):
                finite = torch.isfinite(alive).tolist()
                self._mark_diverged([r for r in range(self.R) if not finite[r]], step, "its training loss became "
                                    f"{float(losses[finite.index(False)])}")
        B = x.shape[1]
        self.train_loss.update(losses, weight=B)
        if exact is not None:
            self.train_nelbo_exact.update(exact, weight=B)
        every = self.trainer.log_every_n_steps
        if every and (step + 1) % every == 0:
            self._write({"train/loss_step": losses.detach()}, step)
        return None if self.fast_step else self.objective(losses)

    def _fast_training_step(self, x: Tensor) -> dict[str, Tensor]:
        if self._runner is None:
            cuda = self.device.type == "cuda"
            self._runner = StepRunner(self.make_step(self._step_optimizer),
                                      generators=(lambda: self.streams.generators(self.device)) if cuda else None)
        self.prepare_step(self.device)
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

    def _clock(self) -> float:
        """``time.perf_counter()`` once the device has finished its queued work (as ``callbacks.Throughput``
        measures a single run's epoch; a model imports nothing from ``callbacks/``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_start(self) -> None:
        self._epoch_t0 = None  # an epoch resumed in the middle has no start in this process

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = self._clock()

    def on_train_epoch_end(self) -> None:
        step = self.global_step - 1
        if float(self.train_loss.weight) > 0:
            values = {"train/loss_epoch": self.train_loss.means()}
            if float(self.train_nelbo_exact.weight) > 0:
                values["train/nelbo_exact"] = self.train_nelbo_exact.means()
            if self._epoch_t0 is not None:
                # the group's epoch time shared by its runs: each run's amortized cost, comparable across group sizes
                values["time/epoch_s"] = torch.full((self.R,), (self._clock() - self._epoch_t0) / self.R)
            self._write(values, step)
            alive = [r for r in range(self.R) if r not in self._dead]
            if alive:  # what the group's progress line shows (its runs' own values go to their loggers)
                losses = values["train/loss_epoch"][alive]
                self.log("train/loss_epoch_min", losses.min(), prog_bar=True, logger=False)
                self.log("train/loss_epoch_max", losses.max(), prog_bar=True, logger=False)
        self.train_loss.reset()
        self.train_nelbo_exact.reset()

    def _eval_streams(self, batch_idx: int):
        """Each run's evaluation draws as the single-run path's (:meth:`CategoricalVAE.eval_rng`: the global
        generator seeded with ``eval_seed + batch_idx``): a generator per run in that state."""
        seed = self.eval_seed + batch_idx
        return rng.streams([torch.Generator(device=self.device).manual_seed(seed) for _ in range(self.R)])

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        xs = x.unsqueeze(0).expand(self.R, *x.shape)
        with self._eval_streams(batch_idx):
            self.val_nelbo.update(self.nelbo(xs).mean(dim=1), weight=x.shape[0])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and float(self.val_nelbo.weight) > 0:
            self._write({"val/nelbo": self.val_nelbo.means(),
                         "val/n_examples": self.val_nelbo.weight.expand(self.R)}, self.global_step - 1)
        self.val_nelbo.reset()

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        """``test/nelbo`` and ``test/log_likelihood`` of every run, with each run's draws those of ``catvae test``
        on its own checkpoint (a generator per run seeded as :meth:`CategoricalVAE.eval_rng` seeds the global
        one, continuing from the exact-draw NELBO to the importance samples)."""
        xs = x.unsqueeze(0).expand(self.R, *x.shape)
        with self._eval_streams(batch_idx):
            logits = self.encode(xs)
            self.test_nelbo.update(self.nelbo(xs, logits=logits).mean(dim=1), weight=x.shape[0])
            self.test_ll.update(self.log_likelihood(xs, logits=logits).mean(dim=1), weight=x.shape[0])

    def on_test_epoch_end(self) -> None:
        if float(self.test_nelbo.weight) > 0:
            self._write({"test/nelbo": self.test_nelbo.means(), "test/log_likelihood": self.test_ll.means()},
                        self.global_step)
        self.test_nelbo.reset()
        self.test_ll.reset()

    def configure_optimizers(self):
        """One Adam over the stacked tensors (elementwise: one Adam per run), fused as
        :meth:`catvae.core.EstimatorTask.adam`; with ``fast_step``, capturable on a GPU and run inside the
        captured step (:class:`~catvae.fast.ReplayOptimizer`)."""
        optimizer = self.adam(capturable=self.fast_step and self.device.type == "cuda")
        if not self.fast_step:
            return optimizer
        self._step_optimizer, self._runner = optimizer, None  # a new fit: the captured step must use this one
        return ReplayOptimizer(optimizer)

    def adam(self, capturable: bool = False) -> torch.optim.Adam:
        """``Adam(lr)`` over the stacked tensors, built as every task's (:func:`catvae.core.adam`)."""
        return adam(self.parameters(), self.lr, self.device, capturable)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        finite = torch.ones(self.R, dtype=torch.bool, device=self.device)
        for param in (*self.encoder.parameters(), *self.decoder.parameters()):
            finite &= torch.isfinite(param).flatten(1).all(dim=1)
        bad = [r for r in (~finite).nonzero().flatten().tolist() if r not in self._dead]
        if bad:  # found here on a GPU, where no step reads the loss back
            self._mark_diverged(bad, self.global_step, "a parameter became non-finite")
            checkpoint["state_dict"]["diverged_at"] = self.diverged_at.detach().clone().cpu()
        checkpoint["catvae_streams"] = [dict(s) for s in self.streams.states]
        checkpoint["catvae_task"] = {"class": type(self).__qualname__, "runs": self.R,
                                     "estimators": [est.name for est in self.estimators], "layout": LAYOUT,
                                     "metric_updates": {name: m.update_count for name, m in step_means(self).items()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        task = checkpoint.get("catvae_task") or {}
        if task.get("class") != type(self).__qualname__ or task.get("runs") != self.R:
            raise ConfigError(f"the group checkpoint holds {task.get('runs')} runs of {task.get('class')}, not "
                              f"{self.R} of {type(self).__qualname__}: delete the group's folder to start it over")
        upgrade_group_checkpoint(checkpoint, self.parameter_names())
        self.streams = RunStreams(checkpoint["catvae_streams"])
        for name, metric in step_means(self).items():  # the means' states come with the state dict, their update counts here
            metric.set_update_count(task.get("metric_updates", {}).get(name, 0))
        diverged = checkpoint["state_dict"].get("diverged_at")
        self._dead = set() if diverged is None else {r for r, step in enumerate(diverged.tolist()) if step >= 0}
        self._blocks = None

    def parameter_names(self) -> list[str]:
        """The names of the stacked parameters, in order (those of :class:`CategoricalVAE`'s)."""
        return [f"{net}.{name}" for net in ("encoder", "decoder") for name, _ in getattr(self, net).named_parameters()]

    def run_state_dict(self, r: int, state_dict: dict | None = None) -> dict[str, Tensor]:
        """Run ``r``'s parameters under the names and in the layout of :class:`CategoricalVAE` (from ``state_dict``, a
        saved group state, or the live parameters)."""
        source = state_dict if state_dict is not None else self.state_dict()
        return {n: run_slice(source[n], r, linear_layout(n, source[n])) for n in self.parameter_names()}


#: the group checkpoint's layout: 2 = parameters under the VAE's names (``encoder.0.weight``), epoch means as
#: ``StepMean`` states; 1 (before 2026-12-03, no ``layout`` key) = ``stacked.<i>`` and raw sum buffers
LAYOUT = 2
_LAYOUT1_MEANS = {"train_loss_sum": "train_loss.mean_value", "train_weight": "train_loss.weight",
                  "train_exact_sum": "train_nelbo_exact.mean_value", "train_exact_weight": "train_nelbo_exact.weight",
                  "val_sum": "val_nelbo.mean_value", "val_weight": "val_nelbo.weight"}


def upgrade_group_checkpoint(checkpoint: dict, names: Sequence[str]) -> dict:
    """Rename, in place, a group checkpoint written before :data:`LAYOUT` 2 to today's keys (its parameters
    ``stacked.<i>`` to ``names[i]``, the VAE's parameter names in order; its sum buffers to the
    :class:`~catvae.metrics.StepMean` states), so that a sweep interrupted under the old code resumes; the tensors
    and the optimizer state (indexed by parameter order, unchanged) stay as they are."""
    task = checkpoint.setdefault("catvae_task", {})
    if task.get("layout", 1) >= LAYOUT:
        return checkpoint
    state = checkpoint["state_dict"]
    for i, name in enumerate(names):
        state[name] = state.pop(f"stacked.{i}")
    for old, new in _LAYOUT1_MEANS.items():
        if old in state:
            state[new] = state.pop(old)
    task.pop("transposed", None)
    task["layout"] = LAYOUT
    return checkpoint


def run_slice(stacked: Tensor, r: int, transposed: bool) -> Tensor:
    """Run ``r``'s tensor (a parameter, or an optimizer moment of one) in :class:`CategoricalVAE`'s layout."""
    return stacked[r].t().contiguous() if transposed else stacked[r].clone()
