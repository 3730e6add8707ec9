"""The VAE application: model maths, data, CLI, checkpoints, exact resume, signals, DDP, bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA, ROOT, needs_mnist
from lightning.pytorch.loggers import Logger

from catvae import CategoricalVAE, TensorBatches
from catvae.cli import main
from catvae.data.mnist import MNISTDataModule, resolve_data_dir

CONFIGS = ROOT / "configs"


def cli_args(runs: Path, *extra: str, setting: str = "l48_k2", estimator: str = "redge_cov") -> list[str]:
    return [
        "--config", str(CONFIGS / "mnist" / f"{setting}.yaml"),
        "--config", str(CONFIGS / "estimators" / f"{estimator}.yaml"),
        "--runs_dir", str(runs),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=2",
        "--data.train_subset=1000",
        "--data.batch_size=100",
        "--data.eval_batch_size=500",
        "--model.n_importance_samples=4",
        *extra,
    ]


def last_ckpt(runs: Path, setting="mnist_l48_k2", estimator="redge_cov", version=0) -> Path:
    return runs / setting / estimator / f"version_{version}" / "checkpoints" / "last.ckpt"


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- model


def test_kl_to_uniform_matches_torch_distributions():
    model = CategoricalVAE("gumbel", latent_dim=5, n_categories=7)
    logits = torch.randn(3, 5, 7)
    q = torch.distributions.Categorical(logits=logits)
    u = torch.distributions.Categorical(logits=torch.zeros(3, 5, 7))
    torch.testing.assert_close(model.kl(logits), torch.distributions.kl_divergence(q, u).sum(-1))


def test_bernoulli_nll_is_bce_with_logits_and_its_gradient():
    from catvae.models.vae import bernoulli_nll

    torch.manual_seed(0)
    eta = torch.cat([8 * torch.randn(6, 784), torch.linspace(-100, 100, 784)[None]]).requires_grad_(True)
    x = (torch.rand(7, 784) < 0.3).float()
    ref64 = torch.nn.functional.binary_cross_entropy_with_logits(eta.double(), x.double(), reduction="none").sum(-1)
    value = bernoulli_nll(eta, x)
    assert value.dtype == torch.float32 and value.shape == (7,)
    # float32 summation of 784 terms: the native BCE is no closer to the float64 value than this
    native = torch.nn.functional.binary_cross_entropy_with_logits(eta, x, reduction="none").sum(-1)
    tol = 4 * (native.double() - ref64).abs().max().item() + 1e-4
    torch.testing.assert_close(value.double(), ref64, rtol=0, atol=tol)
    w = torch.randn(7)
    (grad,) = torch.autograd.grad((value * w).sum(), eta)
    torch.testing.assert_close(grad, (torch.sigmoid(eta) - x).detach() * w[:, None])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # upcast like ATen's autocast policy for the BCE
        assert bernoulli_nll(eta.bfloat16(), x).dtype == torch.float32


def test_nelbo_is_bce_plus_kl_and_importance_bound_is_tighter():
    torch.manual_seed(0)
    model = CategoricalVAE("st", latent_dim=4, n_categories=3)
    x = (torch.rand(64, 784) > 0.5).float()
    logits = model.encode(x)
    z = torch.nn.functional.one_hot(torch.randint(3, (64, 4)), 3).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none").sum(-1)
    torch.testing.assert_close(model.nelbo(x, z=z, logits=logits), expected + model.kl(logits))
    with torch.no_grad():
        elbo = -torch.stack([model.nelbo(x) for _ in range(50)]).mean()
        ll = model.log_likelihood(x, n_samples=50).mean()
    assert ll >= elbo - 1e-3  # log p̂_S >= ELBO in expectation (Jensen), here with a margin of MC noise
    assert ll <= 0


@pytest.mark.parametrize("estimator", ["gumbel", "gumbel_rao", "st", "reinmax", "redge", "redge_cov"])
def test_exact_nelbo_reuses_the_sample_only_when_it_is_an_exact_draw(estimator):
    model = CategoricalVAE(estimator, latent_dim=6, n_categories=3)
    x = (torch.rand(32, 784) > 0.5).float()
    torch.manual_seed(1)
    loss, logits = model._loss(x)
    state = torch.get_rng_state()
    value = model._nelbo_exact(x, loss, logits)
    if model.estimator.exact_draws:  # ST, Gumbel-ST, ReinMax: the loss is already the exact bound's estimate
        assert value.item() == loss.item() and torch.equal(torch.get_rng_state(), state)
    else:  # ReDGE: a second, exact draw z ~ q through the decoder
        assert estimator.startswith("redge")
        torch.set_rng_state(state)
        torch.testing.assert_close(value, model.nelbo(x, logits=logits).mean())
        assert value.item() != loss.item()


@pytest.mark.parametrize("estimator", ["gumbel", "redge_cov"])
def test_bf16_autocast_keeps_the_posterior_in_float32(estimator):
    """Under ``--trainer.precision bf16-mixed`` only the MLPs run in bfloat16: the logits, KL and sampler stay
    float32 (CPU autocast would run softmax/log_softmax in bfloat16), so the loss is within bf16 matmul error
    of the float32 loss and its gradient points the same way."""
    torch.manual_seed(0)
    model = CategoricalVAE(estimator, latent_dim=8, n_categories=4)
    x = (torch.rand(128, 784) > 0.5).float()
    results = []
    for autocast in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, logits = model._loss(x)
            kl = model.kl(logits)
        loss.backward()
        results.append((loss.item(), logits.detach(), kl.detach(), model.encoder[0].weight.grad.flatten().clone()))
        assert logits.dtype == kl.dtype == loss.dtype == torch.float32
    (loss32, logits32, _, grad32), (loss16, logits16, kl16, grad16) = results
    torch.testing.assert_close(kl16, model.kl(logits16))  # the KL of the bf16 run is float32-exact for its logits
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.9


def test_adam_is_fused_on_cpu_and_capturable_for_cuda_graphs():
    model = CategoricalVAE("gumbel", latent_dim=4, n_categories=2)
    assert model.configure_optimizers().defaults["fused"] is True
    capturable = model.adam(capturable=True).defaults
    assert capturable["capturable"] is True and not capturable["fused"]


@pytest.mark.parametrize("kwargs, word", [({"latent_dim": 0}, "latent_dim"), ({"n_categories": 1}, "n_categories"),
                                          ({"activation": "swish"}, "activation"), ({"lr": 0.0}, "lr")])
def test_model_validates_its_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CategoricalVAE("gumbel", **kwargs)


# ---------------------------------------------------------------- data


def test_tensor_batches_epochs_shards_and_resume():
    data = torch.arange(23).float().unsqueeze(1)
    epoch = [0]
    loader = TensorBatches(data, 4, shuffle=True, seed=3, drop_last=True, epoch_fn=lambda: epoch[0])
    first = torch.cat(list(loader)).flatten()
    assert len(loader) == 5 and len(first) == 20 and len(set(first.tolist())) == 20
    assert torch.equal(first, torch.cat(list(loader)).flatten())  # a pure function of the epoch
    epoch[0] = 1
    assert not torch.equal(first, torch.cat(list(loader)).flatten())
    # stop after 2 batches, restore into a fresh loader: the rest of the epoch follows
    it = iter(loader)
    seen = [next(it), next(it)]
    resumed = TensorBatches(data, 4, shuffle=True, seed=3, drop_last=True, epoch_fn=lambda: epoch[0])
    resumed.load_state_dict(loader.state_dict())
    assert torch.equal(torch.cat(seen + list(resumed)).flatten(), torch.cat(list(loader)).flatten())
    # DDP shards: disjoint, equal sizes
    shards = [torch.cat(list(TensorBatches(data, 2, seed=3, rank=r, world_size=2))).flatten() for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) and not set(shards[0].tolist()) & set(shards[1].tolist())
    # evaluation: every example once across ranks
    evals = [torch.cat(list(TensorBatches(data, 5, shuffle=False, rank=r, world_size=2))) for r in (0, 1)]
    assert sorted(torch.cat(evals).flatten().tolist()) == list(range(23))


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("CATVAE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("/x") == Path("/x")
    monkeypatch.delenv("CATVAE_DATA_DIR")
    assert resolve_data_dir(None) == Path("data")


@needs_mnist
@pytest.mark.parametrize("binarize", ["threshold", "dynamic", "none"])
def test_mnist_binarization(binarize):
    dm = MNISTDataModule(str(DATA), binarize=binarize, batch_size=500, download=False)
    dm.setup("fit")
    assert dm.train_x.shape == (60_000, 784) and dm.val_x.shape == (10_000, 784)
    batch = next(iter(dm.train_dataloader()))
    values = set(batch.unique().tolist())
    assert values <= {0.0, 1.0} if binarize != "none" else len(values) > 2
    if binarize == "threshold":  # the paper's: pixel > 0.5
        assert abs(dm.train_x.mean().item() - 0.1325) < 0.01


# ---------------------------------------------------------------- CLI end to end


@needs_mnist
def test_fit_test_and_run_layout(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["fit", *cli_args(runs, "--trainer.max_epochs=1")]) == 0
    version = runs / "mnist_l48_k2" / "redge_cov" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file() and (version / "config.yaml").is_file()
    assert list((version / "checkpoints").glob("best-*.ckpt"))
    assert list(version.glob("events.out.tfevents.*"))
    assert main(["test", *cli_args(runs), "--ckpt_path", "last"]) == 0
    assert (version / "config.test.yaml").is_file()
    capsys.readouterr()
    assert main(["validate", *cli_args(runs), "--ckpt_path", "best"]) == 0
    assert "best-epoch=0-step=10.ckpt" in capsys.readouterr().err
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10 and "catvae_rng" in ckpt


class _RecordingLogger(Logger):
    """The metrics Lightning writes, as (step, name, value)."""

    name, version = "rec", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.extend((step, k, float(v)) for k, v in metrics.items())


@needs_mnist
@pytest.mark.parametrize("fast", [False, True])
def test_train_metrics_written_every_n_steps_and_epoch_means(fast):
    import lightning as L

    L.seed_everything(0)
    model = CategoricalVAE("redge", latent_dim=6, n_categories=3, fast_step=fast)
    steps = []
    original = model._log_train
    model._log_train = lambda step, out, bs: (steps.append((step, out["loss"].item(), out["nelbo_exact"].item())),
                                             original(step, out, bs))[1]
    logger = _RecordingLogger()
    data = MNISTDataModule(str(DATA), train_subset=600, batch_size=100, download=False)  # 6 steps per epoch
    trainer = L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=4, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    written = {}
    for step, name, value in logger.rows:
        written.setdefault(name, []).append((step, value))
    # step values: on Lightning's logging steps (4 and 8 of 12 batches), the value of that very step
    assert [s for s, _ in written["train/loss_step"]] == [3, 7, 11]
    for step, value in written["train/loss_step"]:
        assert value == pytest.approx(steps[step][1], rel=1e-6)
    # epoch values: the mean over that epoch's 6 steps (metrics reset between epochs)
    for key, column in (("train/loss_epoch", 1), ("train/nelbo_exact", 2)):
        means = [sum(s[column] for s in steps[e * 6 : (e + 1) * 6]) / 6 for e in range(2)]
        assert [v for _, v in written[key]] == pytest.approx(means, rel=1e-6)


@needs_mnist
@pytest.mark.parametrize("binarize", ["threshold", "dynamic"])
def test_resume_is_exact(tmp_path, binarize):
    """2N steps straight == N steps, stop, resume for N more (N = 8 stops mid-epoch: 10 steps/epoch)."""
    extra = ("--checkpoint_every_n_steps=1", f"--data.binarize={binarize}")
    straight, split = tmp_path / "a", tmp_path / "b"
    assert main(["fit", *cli_args(straight, "--trainer.max_steps=16", *extra)]) == 0
    assert main(["fit", *cli_args(split, "--trainer.max_steps=8", *extra)]) == 0
    assert torch.load(last_ckpt(split), weights_only=True)["global_step"] == 8
    assert main(["fit", *cli_args(split, "--trainer.max_steps=16", "--ckpt_path=last", *extra)]) == 0
    a = torch.load(last_ckpt(straight), weights_only=True)
    b = torch.load(last_ckpt(split), weights_only=True)
    assert a["global_step"] == b["global_step"] == 16
    assert not (split / "mnist_l48_k2" / "redge_cov" / "version_1").exists()  # resumed in place
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "catvae.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


@needs_mnist
@pytest.mark.slow
def test_ddp_two_processes_reduce_metrics_and_resume_on_one(tmp_path):
    runs = tmp_path / "runs"
    args = cli_args(runs, "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                    "--trainer.max_steps=6", "--trainer.limit_val_batches=20", "--trainer.log_every_n_steps=1")
    proc = _spawn(["fit", *args])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "mnist_l48_k2" / "redge_cov" / "version_0")).Reload()
    # each rank validates its half of the 10k test images; the logged count is the all-reduced total
    assert [e.value for e in events.Scalars("val/n_examples")][-1] == 10_000
    assert torch.load(last_ckpt(runs), weights_only=True)["global_step"] == 6  # 1000 images / 2 ranks / 100
    assert main(["fit", *cli_args(runs, "--trainer.max_steps=8", "--ckpt_path=last")]) == 0
    assert torch.load(last_ckpt(runs), weights_only=True)["global_step"] == 8


def test_one_line_errors_from_estimator_construction(capsys):
    assert main(["fit", "--model=catvae.CategoricalVAE", "--model.estimator=estimators.ReDGE",
                 "--model.estimator.init_args.n_steps=1", "--data=catvae.MNISTDataModule"]) == 2
    assert "n_steps must be an integer >= 2" in capsys.readouterr().err


@needs_mnist
def test_version_directories_never_collide(tmp_path):
    """A new run never reuses a version directory (nothing is overwritten)."""
    runs = tmp_path / "runs"
    for _ in range(2):
        assert main(["fit", *cli_args(runs, "--trainer.max_steps=1", "--trainer.limit_val_batches=0")]) == 0
    versions = sorted(p.name for p in (runs / "mnist_l48_k2" / "redge_cov").iterdir())
    assert versions == ["version_0", "version_1"]
    assert math.isfinite(torch.load(last_ckpt(runs, version=1), weights_only=True)["global_step"])


@needs_mnist
def test_callbacks_from_the_command_line_are_kept(tmp_path):
    """User callbacks (here the gradient diagnostics) run next to catvae's own checkpoint callbacks."""
    runs = tmp_path / "runs"
    assert main(["fit", *cli_args(runs, "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
                                  "--trainer.callbacks+=callbacks.GradientDiagnostics",
                                  "--trainer.callbacks.every_n_steps=2", "--trainer.callbacks.n_draws=4",
                                  "--trainer.callbacks.reference_samples=50")]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(last_ckpt(runs).parents[1])).Reload().Tags()["scalars"]
    assert "diag/rloo/encoder/rel_bias" in tags and last_ckpt(runs).is_file()


@needs_mnist
@pytest.mark.parametrize("extra, refresh", [([], 10), (["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
                                                       "--trainer.callbacks.refresh_rate=3"], 3)])
def test_progress_bar_refreshes_every_10_steps_unless_configured(tmp_path, extra, refresh, monkeypatch):
    """On a terminal (off one it is ProgressLines: test_progress)."""
    from conftest import RecordTrainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)

    args = [a for a in cli_args(tmp_path / "runs", "--trainer.max_steps=2", "--trainer.limit_val_batches=0")
            if a != "--trainer.enable_progress_bar=false"]
    assert main(["fit", *args, "--trainer.callbacks+=conftest.RecordTrainer", *extra]) == 0
    assert RecordTrainer.last.progress_bar_callback.refresh_rate == refresh


def test_image_logger_writes_grids_every_n_epochs():
    from types import SimpleNamespace

    from catvae.benchmarks.vae import ImageLogger

    class Writer:
        def __init__(self):
            self.images = []

        def add_image(self, tag, image, step):
            self.images.append((tag, tuple(image.shape), step))

    model = CategoricalVAE("gumbel", latent_dim=4, n_categories=3)
    logger = ImageLogger(every_n_epochs=3, n_images=4)
    writer = Writer()
    logger.on_validation_batch_start(None, model, torch.rand(8, 784), 0)
    for epoch in range(7):
        trainer = SimpleNamespace(logger=SimpleNamespace(experiment=writer), sanity_checking=False,
                                  current_epoch=epoch, max_epochs=7, global_step=epoch * 10)
        logger.on_validation_epoch_end(trainer, model)
    steps = sorted({s for _, _, s in writer.images})
    assert steps == [0, 30, 60]  # epochs 0, 3, 6 (6 is also the final one)
    assert {t for t, _, _ in writer.images} == {"images/reconstructions", "images/prior_samples"}
    assert writer.images[0][1][0] == 3  # an RGB grid (C, H, W)


def test_step_mean_is_a_weighted_mean_that_propagates_nan():
    from torchmetrics import MeanMetric

    from catvae.metrics import StepMean

    ours, reference = StepMean(), MeanMetric()
    for value, weight in ((3.0, 100), (5.0, 100), (8.0, 50)):
        ours.update(torch.tensor(value), weight=weight)
        reference.update(torch.tensor(value), weight=weight)
    assert ours.compute().item() == pytest.approx(reference.compute().item()) == pytest.approx(4.8)
    ours.reset()
    ours.update(torch.tensor(1.0), weight=3)
    assert ours.compute().item() == 1.0  # reset cleared the previous epoch
    ours.update(torch.tensor(float("nan")), weight=3)
    assert torch.isnan(ours.compute())  # a diverged step shows, it is not dropped


# ---------------------------------------------------------------- MNIST-format datasets


def _write_idx(raw: Path, n_train: int, n_test: int, seed: int = 0) -> dict[bool, torch.Tensor]:
    """Synthetic idx files (MNIST's format: big-endian magic, sizes, then uint8 data) in ``raw``."""
    import struct

    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    images = {}
    for train, prefix, n in ((True, "train", n_train), (False, "t10k", n_test)):
        x = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + x.numpy().tobytes())
        y = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.numpy().tobytes())
        images[train] = x.reshape(n, 784)
    return images


@pytest.mark.parametrize("dataset, folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_format_datasets_train_from_their_own_folder(tmp_path, monkeypatch, capsys, dataset, folder):
    """--data.dataset reads <data_dir>/<torchvision class>/raw (here small synthetic idx files), names the run
    after the dataset, and a missing folder is one line naming it."""
    import catvae.data.mnist as mnist

    monkeypatch.setattr(mnist, "SIZES", {True: 300, False: 100})
    images = _write_idx(tmp_path / "data" / folder / "raw", 300, 100)
    for train in (True, False):
        assert torch.equal(mnist.load_mnist(tmp_path / "data", train, False, dataset), images[train])
    runs = tmp_path / "runs"
    args = ["fit", "--config", str(CONFIGS / "mnist" / "l48_k2.yaml"), "--config", str(CONFIGS / "data" / f"{dataset}.yaml"),
            "--runs_dir", str(runs), "--trainer.enable_progress_bar=false", "--trainer.max_steps=3",
            "--data.data_dir", str(tmp_path / "data"), "--data.download=false", "--data.batch_size=100",
            "--data.eval_batch_size=100", "--model.n_importance_samples=2"]
    assert main(args) == 0
    assert (runs / f"{dataset}_l48_k2" / "gumbel" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    assert main([*args[:-6], "--data.data_dir", str(tmp_path / "empty"), *args[-4:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder} files not found in" in err[0] and f"{folder}/raw/" in err[0]


@needs_mnist
def test_sample_writes_prior_and_reconstruction_grids(tmp_path, capsys):
    """catvae sample: prior samples and (original, reconstruction) rows from a checkpoint, as PNG grids; a
    benchmark checkpoint or a bad -n is one line."""
    from PIL import Image

    runs = tmp_path / "runs"
    assert main(["fit", *cli_args(runs, "--trainer.max_steps=3")]) == 0
    ckpt = last_ckpt(runs)
    out = tmp_path / "look" / "grid.png"
    assert main(["sample", "--ckpt_path", str(ckpt), "-n", "9", "--out", str(out)]) == 0
    assert "9 prior samples" in capsys.readouterr().out
    prior, pairs = Image.open(out), Image.open(out.with_name("grid_reconstructions.png"))
    assert prior.size == (3 * 30 + 2, 3 * 30 + 2)  # 3 x 3 images of 28 px, 2 px padding
    assert pairs.size == (3 * 30 + 2, 6 * 30 + 2)  # each row of originals followed by its reconstructions
    for bad, fragment in ((["-n", "0"], "-n must be >= 1"), (["--out", str(tmp_path / "x.jpg")], ".png"),
                          (["--ckpt_path", str(tmp_path / "none.ckpt")], "does not exist")):
        assert main(["sample", "--ckpt_path", str(ckpt), *bad]) == 2
        assert fragment in capsys.readouterr().err


@needs_mnist
def test_the_data_order_follows_the_run_seed_unless_pinned(tmp_path):
    """Issue 25.1: the seeds of a sweep see different data orders (as the authors' script seeds its shuffle with
    the run's seed); ``--data.seed`` pins the order; config.yaml records the order's seed."""
    import yaml
    from conftest import RecordTrainer

    def first_batch(seed: int, *extra: str) -> tuple[torch.Tensor, int]:
        runs = tmp_path / f"s{seed}{'_'.join(extra)}"
        assert main(["fit", *cli_args(runs, "--seed_everything", str(seed), "--trainer.max_steps", "1",
                                      "--trainer.callbacks+=conftest.RecordTrainer", *extra)]) == 0
        (config,) = runs.rglob("config.yaml")
        recorded = yaml.safe_load(config.read_text())["data"]["init_args"]["seed"]
        return next(iter(RecordTrainer.last.datamodule.train_dataloader())), recorded

    (a, seed_a), (b, seed_b) = first_batch(1), first_batch(2)
    assert (seed_a, seed_b) == (1, 2) and not torch.equal(a, b)
    (c, seed_c), (d, seed_d) = first_batch(1, "--data.seed", "7"), first_batch(2, "--data.seed", "7")
    assert (seed_c, seed_d) == (7, 7) and torch.equal(c, d) and not torch.equal(a, c)
    assert MNISTDataModule(str(DATA), download=False).seed is None  # the default: the run's
