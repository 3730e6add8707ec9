r"""The categorical VAE of the paper's §4.4 (Bernoulli decoder, mean-field categorical posterior)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from estimators.base import ConfigError
from estimators.constraints import boolean, integer, one_of, optional, positive, sizes
from estimators.functional import LOW_PRECISION, log_softmax, sample_one_hot, softmax

from ...core import EstimatorSpec, EstimatorTask, OptimizerSpec, SchedulerSpec
from ...fast import ReplayOptimizer, StepRunner
from ...metrics import StepMean
from .data import IMAGE_SHAPE
from .images import ImageLogger

__all__ = ["CategoricalVAE", "RunLinear", "VAEMath", "bernoulli_nll", "kl_to_uniform", "mlp", "run_mlp", "stack_mlps"]

ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with ``activation`` between them (none at the end)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class RunLinear(nn.Module):
    r"""``R`` independent ``nn.Linear`` layers applied to ``R`` inputs at once (a run dimension first):
    ``h_r ↦ h_r W_r + b_r`` for ``h [R, *lead, in]``, one ``torch.baddbmm`` for all runs.

    ``weight`` is ``[R, in, out]``, the runs' ``nn.Linear`` weights transposed: with ``nn.Linear``'s ``[out, in]``
    the CPU batched matmul ran 20-25 % slower than the runs' own ``addmm``, forward and backward; transposed it is
    as fast (measured on docs/performance.md's CPU). :meth:`run_weight` gives run ``r``'s back in ``nn.Linear``'s
    layout.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().t() for layer in layers]).contiguous())
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]).contiguous())

    def forward(self, h: Tensor) -> Tensor:
        R, n_in, n_out = self.weight.shape
        out = torch.baddbmm(self.bias.unsqueeze(1), h.reshape(R, -1, n_in), self.weight)
        return out.view(*h.shape[:-1], n_out)

    def run(self, r: int, h: Tensor) -> Tensor:
        """Run ``r``'s layer alone on ``h [..., in]``."""
        return torch.matmul(h, self.weight[r]) + self.bias[r]


def stack_mlps(mlps: Sequence[nn.Sequential]) -> nn.Sequential:
    """The MLPs of ``R`` runs (built by :func:`mlp` with the same sizes) as one MLP over a leading run dimension:
    each ``nn.Linear`` becomes a :class:`RunLinear` of the runs' layers under the same name (``0.weight``, ...),
    the activations are kept."""
    first = mlps[0]
    return nn.Sequential(*[RunLinear([m[i] for m in mlps]) if isinstance(layer, nn.Linear) else layer
                           for i, layer in enumerate(first)])


def run_mlp(stacked: nn.Sequential, r: int, h: Tensor) -> Tensor:
    """Run ``r`` of a :func:`stack_mlps` MLP alone: ``h [..., in] -> [..., out]`` with its slice of every weight."""
    for layer in stacked:
        h = layer.run(r, h) if isinstance(layer, RunLinear) else layer(h)
    return h


def linear_layout(name: str, tensor: Tensor) -> bool:
    """Whether ``tensor``, the parameter ``name`` of a :func:`stack_mlps` MLP (or an optimizer moment of one), is a
    transposed :class:`RunLinear` weight ``[R, in, out]`` (``nn.Linear`` keeps ``[out, in]``)."""
    return name.endswith("weight") and tensor.dim() == 3


class _BernoulliNLL(torch.autograd.Function):
    r"""``−log p(x | η) = Σ_pixels max(η, 0) − xη + log(1 + e^{−|η|})`` per example, with the gradient
    ``σ(η) − x`` written directly (the decoder's Bernoulli likelihood on logits ``η``).

    The same function as ``binary_cross_entropy_with_logits(η, x).sum(-1)``, which on CPU goes through
    ``log_sigmoid``, a kernel ATen does not vectorize there (the measured gain: docs/performance.md,
    "Bernoulli likelihood"). The two agree to ~1e-7 per pixel: where ``e^{−|η|}`` is below
    float32's resolution around 1, ``log(1 + e^{−|η|})`` rounds to 0 instead of ``e^{−|η|}``.
    """

    @staticmethod
    def forward(ctx, eta: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(eta, x)
        out = eta.clamp_min(0.0)
        out.addcmul_(x, eta, value=-1.0)
        out.add_(eta.abs().neg_().exp_().add_(1.0).log_())
        return out.sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        eta, x = ctx.saved_tensors
        return torch.sigmoid(eta).sub_(x).mul_(grad.unsqueeze(-1)), None


def bernoulli_nll(eta: Tensor, x: Tensor) -> Tensor:
    """``−log p(x | η)`` summed over the last dimension, in float32 at least; the vectorized form of
    :class:`_BernoulliNLL` on CPU, ``binary_cross_entropy_with_logits`` (a fused kernel) elsewhere."""
    if eta.dtype in LOW_PRECISION:  # bf16/fp16 autocast: as ATen's autocast policy for the BCE
        eta = eta.float()
    if eta.is_cuda:
        return nn.functional.binary_cross_entropy_with_logits(eta, x, reduction="none").sum(-1)
    return _BernoulliNLL.apply(eta, x.to(eta.dtype))


def kl_to_uniform(logits: Tensor) -> Tensor:
    """``Σ_l KL(q_l ‖ Uniform(K)) = Σ_l Σ_k q_lk log(q_lk K)`` per example, for posterior logits ``[..., L, K]``."""
    log_q = log_softmax(logits)
    return (log_q.exp() * (log_q + math.log(logits.shape[-1]))).sum(dim=(-1, -2))


def _image_shape(shape: Sequence[int] | None, size: int | None) -> tuple[int, ...]:
    """``(height, width)`` from ``image_shape``, else from a flat ``image_size`` (a square if it is a square number,
    else one row), else MNIST's."""
    if shape is not None:
        if size is not None and size != math.prod(shape):
            raise ConfigError(f"image_size {size} is not the pixels of image_shape {list(shape)}; give one of them")
        return tuple(shape)
    if size is None:
        return IMAGE_SHAPE
    side = math.isqrt(size)
    return (side, side) if side * side == size else (1, size)


class VAEMath:
    r"""The math of the VAE of §4.4 on any leading dimensions, shared by :class:`CategoricalVAE` (one run, ``x [B, D]``)
    and :class:`~catvae.models.stacked.StackedVAE` (``R`` runs, ``x [R, B, D]``, every layer a :class:`RunLinear`):
    the same code computes one run's and a group's NELBO and log-likelihood.

    Needs ``encoder`` (``[..., D] -> [..., L·K]``), ``decoder`` (``[..., L·K] -> [..., D]``), ``latent_dim``,
    ``n_categories``, ``n_importance_samples`` and ``importance_chunk``.
    """

    def encode(self, x: Tensor) -> Tensor:
        """Posterior logits ``φ(x)``, ``[..., B, L, K]``; float32 at least, also under bf16/fp16 autocast
        (``--trainer.precision bf16-mixed``), where CPU autocast would leave the softmax, the KL and the
        sampler's CDF in 8 significant bits."""
        logits = self.encoder(x)
        if logits.dtype in LOW_PRECISION:
            logits = logits.float()
        return logits.view(*x.shape[:-1], self.latent_dim, self.n_categories)

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits ``η(z)`` for latents ``[..., L, K]``."""
        return self.decoder(z.flatten(-2))

    def kl(self, logits: Tensor) -> Tensor:
        """``Σ_l KL(q_l ‖ Uniform(K))`` per example (:func:`kl_to_uniform`)."""
        return kl_to_uniform(logits)

    def reconstruction(self, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(x|z)`` per example: BCE with logits summed over pixels."""
        return bernoulli_nll(self.decode(z), x)

    def nelbo(self, x: Tensor, z: Tensor | None = None, logits: Tensor | None = None) -> Tensor:
        """Negative ELBO per example; ``z`` defaults to an exact draw from ``q(z|x)``."""
        logits = self.encode(x) if logits is None else logits
        if z is None:
            z = sample_one_hot(softmax(logits))
        return self.reconstruction(x, z) + self.kl(logits)

    def diagnostic_objective(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``(logits, f)``: the posterior logits of ``x`` and ``f(z) =`` the negative ELBO per example of samples
        ``z [..., B, L, K]`` (the training objective; :class:`callbacks.GradientDiagnostics`' protocol)."""
        logits = self.encode(x)

        def f(z: Tensor) -> Tensor:
            return self.nelbo(x.expand(*z.shape[:-3], *x.shape), z=z, logits=logits)

        return logits, f

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, n_samples: int | None = None, logits: Tensor | None = None) -> Tensor:
        r"""Importance-weighted ``log p(x) ≈ logsumexp_s[log p(x|z_s) + log p(z_s) − log q(z_s|x)] − log S`` per
        example (``S = n_samples``, default ``n_importance_samples``), drawn ``importance_chunk`` samples at a
        time, each chunk ``z [..., s, B, L, K]`` (``logits``: ``x``'s posterior logits, if already computed)."""
        n_samples = n_samples or self.n_importance_samples
        logits = self.encode(x) if logits is None else logits
        log_q = log_softmax(logits)
        probs = log_q.exp().unsqueeze(-4)
        log_prior = -self.latent_dim * math.log(self.n_categories)
        weights = []
        for start in range(0, n_samples, self.importance_chunk):
            s = min(self.importance_chunk, n_samples - start)
            z = sample_one_hot(probs.expand(*probs.shape[:-4], s, *probs.shape[-3:]))  # [..., s, B, L, K]
            log_px = -self.reconstruction(x.unsqueeze(-3).expand(*x.shape[:-2], s, *x.shape[-2:]), z)
            weights.append(log_px + log_prior - (z * log_q.unsqueeze(-4)).sum(dim=(-1, -2)))
        return torch.logsumexp(torch.cat(weights, dim=-2), dim=-2) - math.log(n_samples)


class CategoricalVAE(VAEMath, EstimatorTask):
    r"""Bernoulli VAE on binary images (the paper's: binarized MNIST) with ``L`` categorical latents of ``K``
    classes.

    Encoder ``x ↦ φ(x) ∈ R^{L×K}`` (the logits of the mean-field posterior ``q(z|x)``, paper eq. 2),
    decoder ``z ↦ η(z) ∈ R^D`` (Bernoulli pixel logits, ``D`` the pixels of ``image_shape``). The objective,
    averaged over the batch, is the negative ELBO of §4.4 with a uniform prior over ``V^L``:

    ``loss = Σ_pixels BCE(η(Z), x) + Σ_l KL(q_l(·|x) ‖ U(K))``, ``Z = estimator(φ(x))``,
    ``KL(q_l ‖ U) = Σ_k q_lk log(q_lk K)`` (closed form, as in the authors' code).

    Logged: ``train/loss_step`` (every ``log_every_n_steps``) and ``train/loss_epoch`` (what the
    estimator optimizes; the paper's Table 3 metric), ``train/nelbo_exact`` (epoch mean of the same
    bound with an exact draw ``Z ~ q``), ``val/nelbo`` and
    ``test/nelbo`` (exact draws), ``test/log_likelihood`` (importance-weighted, ``S`` samples).

    Args:
        estimator: the gradient estimator of the latent sample (instance or registry name).
        latent_dim: number of categorical latents ``L >= 1``.
        n_categories: classes per latent ``K >= 2``.
        encoder_hidden: hidden sizes of the encoder (paper: 512, 256).
        decoder_hidden: hidden sizes of the decoder (paper: 256, 512).
        activation: ``leaky_relu`` (paper), ``relu``, ``elu``, ``tanh`` or ``gelu``.
        lr: learning rate of the default optimizer, Adam (paper: 5e-4); with ``optimizer`` set, that
            optimizer's own ``lr`` applies instead.
        optimizer, lr_scheduler: another optimizer / a learning-rate schedule (:data:`catvae.core.OptimizerSpec`,
            :data:`catvae.core.SchedulerSpec`); default Adam(``lr``) and a constant learning rate.
        exact_nelbo_every_n_steps: compute ``train/nelbo_exact`` every N steps. It is free for estimators
            whose sample is an exact draw from ``q`` (``estimator.exact_draws``) and costs one extra decoder
            pass for ReDGE (its cost: docs/performance.md). With N > 1 its epoch mean covers other batches than
            ``train/loss`` does, which offsets the two by ~1 nat (batch composition): keep N = 1 to compare them.
            ``0`` turns it off (fastest ReDGE training; `catvae compare` then has no exact training column).
        n_importance_samples: ``S`` of ``test/log_likelihood``.
        importance_chunk: samples decoded at once for the importance-weighted bound (memory bound).
        image_shape: the images' ``(height, width)``; ``catvae fit`` takes it from the data module's ``image_shape``
            (left unset, MNIST's). Images enter flattened, ``[B, height·width]``.
        image_size: the pixels of an image, flat (what checkpoints before ``image_shape`` record); a square number
            is read as a square image.
        fast_step: run each training step (forward, estimator, backward, Adam) as one unit that is
            captured in a CUDA graph on a GPU (:mod:`catvae.fast`); same results, far fewer kernel
            launches. Single device only. Off CUDA it runs eagerly (identical to the default path with
            ``exact_nelbo_every_n_steps=1``: the captured step computes ``train/nelbo_exact`` every step
            unless it is 0).
    """

    hparams_metrics = ("train/loss_epoch", "train/nelbo_exact", "val/nelbo", "test/nelbo", "test/log_likelihood")
    #: what ``catvae compare`` reports for a sweep of VAEs unless its spec says otherwise (the spec's own form)
    compare_defaults = {
        "metrics": [
            {"column": "train_loss", "tag": "train/loss_epoch", "header": "train/loss"},
            {"column": "train_nelbo_exact", "tag": "train/nelbo_exact", "header": "train NELBO (exact z~q)"},
            {"column": "test_nelbo", "tag": "test/nelbo", "header": "test NELBO (exact z~q)"},
            {"column": "test_log_likelihood", "tag": "test/log_likelihood", "header": "test log p(x)", "lower": False},
        ],
        "curves": [
            {"tag": "train/loss_epoch", "title": "train/loss (estimator's samples)"},
            {"tag": "train/nelbo_exact", "title": "train NELBO (exact samples)"},
            {"tag": "val/nelbo", "title": "val NELBO (exact samples)"},
        ],
        "note": "`train/loss` is the objective the estimator optimizes, averaged over the last epoch, with the "
                "estimator's own hard samples (the paper's Table 3 metric). The *exact* columns evaluate the same "
                "bound with exact draws z ~ q(z|x): for ReDGE variants, whose hard samples are not exact draws from "
                "q, `train/loss` is not the model's bound — read it next to the exact columns.",
        # --quick: 1,000 training images, one validation and one test batch of 200, 4 importance samples
        "quick": {"args": ["--data.train_subset=1000", "--data.batch_size=100", "--data.eval_batch_size=200",
                           "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
                           "--model.n_importance_samples=4", "--trainer.log_every_n_steps=5"]},
    }
    arg_constraints = {
        "latent_dim": integer(1), "n_categories": integer(2), "encoder_hidden": sizes, "decoder_hidden": sizes,
        "activation": one_of(*sorted(ACTIVATIONS)), "lr": positive, "exact_nelbo_every_n_steps": integer(0),
        "n_importance_samples": integer(1), "importance_chunk": integer(1), "image_size": optional(integer(1)),
        "image_shape": optional(sizes),
        "fast_step": boolean,
    }

    @property
    def run_name(self) -> str:
        return f"l{self.latent_dim}_k{self.n_categories}"

    def __init__(
        self,
        estimator: EstimatorSpec = "gumbel",
        latent_dim: int = 48,
        n_categories: int = 2,
        encoder_hidden: Sequence[int] = (512, 256),
        decoder_hidden: Sequence[int] = (256, 512),
        activation: str = "leaky_relu",
        lr: float = 5e-4,
        exact_nelbo_every_n_steps: int = 1,
        n_importance_samples: int = 100,
        importance_chunk: int = 10,
        image_size: int | None = None,
        image_shape: Sequence[int] | None = None,
        fast_step: bool = False,
        optimizer: OptimizerSpec = None,
        lr_scheduler: SchedulerSpec = None,
    ) -> None:
        super().__init__(estimator, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["estimator"])
        self.record_estimator()
        self.latent_dim, self.n_categories = latent_dim, n_categories
        self.n_importance_samples, self.importance_chunk = n_importance_samples, importance_chunk
        self.image_shape = _image_shape(image_shape, image_size)
        pixels = math.prod(self.image_shape)
        self.encoder = mlp([pixels, *encoder_hidden, latent_dim * n_categories], activation)
        self.decoder = mlp([latent_dim * n_categories, *decoder_hidden, pixels], activation)
        self.train_loss = StepMean()
        self.train_nelbo_exact = StepMean()
        self.val_nelbo = MeanMetric()
        self.val_examples = SumMetric()
        self.test_nelbo = MeanMetric()
        self.test_ll = MeanMetric()
        if fast_step:
            if lr_scheduler is not None:
                raise ConfigError("fast_step replays one captured step, whose learning rate is fixed: drop "
                                  "--model.init_args.lr_scheduler, or fast_step")
            self.automatic_optimization = False
            self._runner = None

    # -- model (encode, decode, kl, reconstruction, nelbo, log_likelihood: VAEMath) ----------------------
    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction probabilities of ``x`` through an exact posterior draw."""
        logits = self.encode(x)
        return torch.sigmoid(self.decode(sample_one_hot(softmax(logits))))

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """``n`` images (pixel probabilities) decoded from the uniform prior."""
        index = torch.randint(self.n_categories, (n, self.latent_dim), device=self.device)
        z = nn.functional.one_hot(index, self.n_categories).float()
        return torch.sigmoid(self.decode(z))

    # -- Lightning ------------------------------------------------------------------------------
    def _loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The estimator's objective (batch mean) and the posterior logits: the negative ELBO of the estimator's
        samples (:meth:`diagnostic_objective`'s ``f``, which an estimator drawing several samples per example
        broadcasts)."""
        logits, nelbo = self.diagnostic_objective(x)
        return self.estimator.surrogate(logits, nelbo).mean(), logits

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor | None:
        step = self.global_step  # optimizer steps before this batch (the fast path's update increments it)
        due = self._exact_nelbo_due(step)
        if self.hparams.fast_step:
            out = self._fast_training_step(x)  # a captured step computes the exact NELBO every step or never
            self.check_finite_loss(out["loss"])
            if not due:
                out.pop("nelbo_exact", None)
            self._log_train(step, out, x.shape[0])
            return None
        loss, logits = self._loss(x)
        out = {"loss": loss.detach()}
        if due:
            out["nelbo_exact"] = self._nelbo_exact(x, loss, logits)
        self._log_train(step, out, x.shape[0])
        return loss

    def _exact_nelbo_due(self, step: int) -> bool:
        every = self.hparams.exact_nelbo_every_n_steps
        return every > 0 and step % every == 0

    def _log_train(self, step: int, out: dict[str, Tensor], batch_size: int) -> None:
        """Accumulate the epoch metrics every step (a few tensor ops, no host sync); call ``self.log`` only
        on the steps Lightning writes (every ``log_every_n_steps``): each call costs ~0.3-0.7 ms of Python,
        more than the whole captured step on a GPU. The epoch values are logged in ``on_train_epoch_end``."""
        self.train_loss.update(out["loss"], weight=batch_size)
        if "nelbo_exact" in out:
            self.train_nelbo_exact.update(out["nelbo_exact"], weight=batch_size)
        every = self.trainer.log_every_n_steps
        if every and (step + 1) % every == 0:  # Lightning's own rule for when step metrics are written
            # not on the progress bar: Lightning 2.6 reads every cached progress-bar value with .item() after
            # every batch, a host sync per step that would stall a captured step's pipeline
            self.log("train/loss_step", out["loss"], batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        # the torchmetrics objects: Lightning computes (reduced across DDP ranks) and resets them. Nothing
        # to log when the epoch's means were logged before the checkpoint this run resumed from.
        if not self.train_loss.update_called:
            return
        self.log("train/loss_epoch", self.train_loss, prog_bar=True)
        if self.train_nelbo_exact.update_called:
            self.log("train/nelbo_exact", self.train_nelbo_exact)

    @torch.no_grad()
    def _nelbo_exact(self, x: Tensor, loss: Tensor, logits: Tensor) -> Tensor:
        """``train/nelbo_exact`` of this batch: the loss itself when the estimator's sample is an exact
        draw from ``q`` (``estimator.exact_draws``: ST, Gumbel-ST, ReinMax), else a second, exact draw
        through the decoder."""
        if self.estimator.exact_draws:
            return loss.detach()
        return self.nelbo(x, logits=logits.detach()).mean()

    # -- the whole step as one function (the fast path captures it) ----------------------------------
    def make_step(self, optimizer: torch.optim.Optimizer) -> Callable[[Tensor], dict[str, Tensor]]:
        """The whole training step on a batch as one function of the batch: ``zero_grad``, forward, estimator,
        the exact NELBO (unless ``exact_nelbo_every_n_steps`` is 0), backward and ``optimizer``'s update. It
        returns the step's tensors (``loss``, ``nelbo_exact``) and never reads them back (no host sync), so
        the fast path can capture it in a CUDA graph; ``catvae bench step`` times it."""

        def step(x: Tensor) -> dict[str, Tensor]:
            optimizer.zero_grad(set_to_none=True)
            loss, logits = self._loss(x)
            out = {"loss": loss.detach()}
            if self.hparams.exact_nelbo_every_n_steps > 0:
                out["nelbo_exact"] = self._nelbo_exact(x, loss, logits)
            loss.backward()
            optimizer.step()
            return out

        return step

    def check_trainer(self, trainer) -> None:
        """``fast_step`` runs one process on one device, in float32 or bf16 autocast: DDP and float16
        mixed precision (whose loss scaling happens outside the captured step) are refused."""
        if not self.hparams.fast_step:
            return
        if trainer.world_size > 1:
            raise ConfigError(f"--model.init_args.fast_step runs on a single device, but the trainer has "
                              f"{trainer.world_size} processes; drop fast_step to train with DDP")
        precision = str(trainer.precision)
        if precision.startswith("16"):
            raise ConfigError(f"--model.init_args.fast_step does not support --trainer.precision {precision} "
                              "(its loss scaling runs outside the captured step); use bf16-mixed or 32-true")

    def _fast_training_step(self, x: Tensor) -> dict[str, Tensor]:
        if self._runner is None:
            self._runner = StepRunner(self.make_step(self._step_optimizer))
        out: dict[str, Tensor] = {}
        self.optimizers().step(closure=lambda: out.update(self._runner(x)))
        return out

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        with self.eval_rng(batch_idx):
            self.val_nelbo.update(self.nelbo(x).mean(), weight=x.shape[0])
        self.val_examples.update(x.shape[0])
        self.log("val/nelbo", self.val_nelbo, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        self.log("val/n_examples", self.val_examples, on_epoch=True, batch_size=x.shape[0])

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        with self.eval_rng(batch_idx):
            self.test_nelbo.update(self.nelbo(x).mean(), weight=x.shape[0])
            self.test_ll.update(self.log_likelihood(x).mean(), weight=x.shape[0])
        self.log("test/nelbo", self.test_nelbo, on_epoch=True, batch_size=x.shape[0])
        self.log("test/log_likelihood", self.test_ll, on_epoch=True, batch_size=x.shape[0])

    def predict_step(self, x: Tensor, batch_idx: int) -> Tensor:
        with self.eval_rng(batch_idx):
            return self(x)

    def configure_optimizers(self):
        if not self.hparams.fast_step:
            return super().configure_optimizers()
        # capturable: Adam's step counters live on the GPU, so its update can be captured in the graph
        self._step_optimizer = self.build_optimizer(capturable=self.device.type == "cuda")
        self._runner = None  # a new fit builds a new optimizer: the captured step must use it
        return ReplayOptimizer(self._step_optimizer)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(self.trainer)

    def configure_callbacks(self):
        return [ImageLogger()]
