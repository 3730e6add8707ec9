"""Benchmarks that print numbers: ``catvae bench estimators``, ``train``, ``step``, ``variance``, ``sweep`` and
``overhead``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision import transforms
from torchvision.datasets import MNIST
from tqdm import tqdm

import estimators
from callbacks.compat import torch_dispatch_mode, tree_leaves
from callbacks.diagnostics import gradient_diagnostics
from estimators.base import ConfigError
from estimators.rng import seeded

from .benchmarks.vae import CategoricalVAE, MNISTDataModule, StackedVAE
from .compare.spec import load_spec
from .data.paths import resolve_data_dir
from .fast import StepRunner
from .runner import default_callbacks, fit_callbacks
from .sample import DataRecord, load_vae
from .tools import config_path

#: the paper's VAE latent shapes (batch 200). Every estimator is built with its defaults, which are Table 5's
#: VAE column (``configs/estimators/``).
VAE_SHAPES = ((48, 2), (30, 10), (32, 64))


def _setting(est) -> str:
    """An estimator's hyperparameters in a table cell (``n_steps=4,t_1=0.333``)."""
    hp = {k: v for k, v in est.hparams().items() if k not in ("hard", "fused")}
    return ",".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def _shape(text: str) -> tuple[int, int]:
    """``"48x2"`` -> ``(48, 2)``."""
    try:
        latent_dim, n_categories = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"latent shape {text!r} is not LxK (e.g. 48x2)") from None
    if latent_dim < 1 or n_categories < 2:
        raise ConfigError(f"latent shape {text!r}: need L >= 1 and K >= 2")
    return latent_dim, n_categories


def _interleaved(calls: dict[str, object], rounds: int, inner: int, device: torch.device,
                 what: str = "") -> dict[str, list[float]]:
    """Seconds per call of each ``calls[name]()``, one list entry per round; the callables take turns
    within every round, so that drifts in a shared machine's speed hit all of them alike. With ``what`` (the
    shape or size being timed) the progress goes to stderr: a tqdm bar naming the call being timed on a terminal,
    one line per ``what`` elsewhere."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    tty = what and sys.stderr.isatty()
    if what and not tty:
        print(f"bench: {what}: {len(calls)} x {rounds} rounds of {inner} ({', '.join(calls)})", file=sys.stderr,
              flush=True)
    bar = tqdm(total=rounds * len(calls), desc=what, leave=False, file=sys.stderr, disable=not tty)
    for _ in range(rounds):
        for name, call in calls.items():
            bar.set_postfix_str(name, refresh=False)
            bar.update()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - t0) / inner)
    bar.close()
    return times


def _device(text: str | None) -> torch.device:
    """``--device`` as a torch device that exists here (ConfigError otherwise); ``None``: cuda if available, else
    cpu."""
    if text is None:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text!r} is not a device; use cpu or cuda (cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {text}: only cpu and cuda are supported")
    return device


def _known(names: list[str]) -> list[str]:
    """``--estimators``: registered names (ConfigError naming the registered ones otherwise)."""
    unknown = [n for n in names if n not in estimators.available()]
    if unknown:
        raise ConfigError(f"--estimators: unknown estimator {', '.join(unknown)}; registered: "
                          f"{', '.join(estimators.available())}")
    return names


def _gumbel_first(names: list[str]) -> list[str]:
    """``names`` with Gumbel-ST, the baseline of every ratio, first (added if missing)."""
    names = _known(names)
    return ["gumbel"] + [n for n in names if n != "gumbel"]


def _paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of the same-round ratio."""
    return statistics.median(a / b for a, b in zip(times, base))


def _forward_backward(est, logits: torch.Tensor, weight: torch.Tensor) -> None:
    logits.grad = None
    est.surrogate(logits, lambda z: (z * weight).sum(dim=(-1, -2))).sum().backward()


def bench_estimators(args: argparse.Namespace) -> None:
    _at_least_one(args, "repeats", "inner", "batch")
    device = _device(args.device)
    names = _gumbel_first(args.estimators or estimators.available())
    shapes = [_shape(s) for s in args.shapes] if args.shapes else VAE_SHAPES
    torch.manual_seed(0)
    print(f"forward+backward per call, batch {args.batch}, device {_device_name(device)}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; median of {args.repeats} interleaved rounds of {args.inner} calls")
    ests = {}
    for name in names:
        est = estimators.build(name)
        ests[name] = (_setting(est), est)
        if args.unfused and "fused" in est.hparams():  # the ReDGE family: also its plain-autograd transcription
            ests[name + " unfused"] = (_setting(est), estimators.build(name, fused=False))
    cells: dict[str, list[str]] = {label: [] for label in ests}
    for latent_dim, n_categories in shapes:
        logits = torch.randn(args.batch, latent_dim, n_categories, device=device, requires_grad=True)
        weight = torch.randn(args.batch, latent_dim, n_categories, device=device)

        calls = {label: functools.partial(_forward_backward, est, logits, weight) for label, (_, est) in ests.items()}
        _interleaved(calls, 1, max(3, args.inner // 4), device)  # warm-up
        times = _interleaved(calls, args.repeats, args.inner, device, f"L={latent_dim},K={n_categories}")
        for label in ests:
            t = statistics.median(times[label])
            cells[label].append(f"{t * 1e6:9.0f} us ({_paired_ratio(times[label], times['gumbel']):4.2f}x)")
    header = f"{'estimator':<22}{'settings':<22}" + "".join(f"{f'L={lat},K={cat}':>24}" for lat, cat in shapes)
    print(header)
    print("-" * len(header))
    for label, (setting, _) in ests.items():
        print(f"{label:<22}{setting:<22}" + "".join(f"{c:>24}" for c in cells[label]))
    print("(ratio = median over rounds of time / Gumbel-ST time in the same round, same shape)")




# ---------------------------------------------------------------------------------------------------
# catvae bench train: the reference-style loop against `catvae fit`'s training step, same process


class _StepTimer:
    """Wall time of training steps over a window (steps ``warmup`` to ``warmup + steps``).

    ``pipelined`` (default): the device is waited for only at the two ends of the window, so the host
    prepares step i+1 while the device runs step i, as in ``catvae fit`` (whose ``time/epoch_s`` also
    synchronizes once per epoch); the figure is the window's time over its steps. ``pipelined=False``
    waits at every step: the serialized host + device time of one step (median), an upper bound.
    On CPU both are the same measurement.
    """

    def __init__(self, device: torch.device, warmup: int, steps: int, pipelined: bool = True) -> None:
        self.device, self.warmup, self.steps, self.pipelined = device, warmup, steps, pipelined
        self.stamps: list[float] = []

    def tick(self) -> None:
        index = len(self.stamps)
        if self.device.type == "cuda" and (not self.pipelined or index in (self.warmup, self.warmup + self.steps)):
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def per_step(self, median: bool | None = None) -> float:
        """Seconds per step: the window's mean (pipelined; logging steps and epoch ends included) or the
        median step (serialized, or ``median=True``: the steady-state step without them)."""
        window = self.stamps[self.warmup:self.warmup + self.steps + 1]
        if len(window) < 2:
            raise RuntimeError(f"only {len(self.stamps)} steps were timed; the loop ended early")
        if (not self.pipelined) if median is None else median:
            return statistics.median(b - a for a, b in zip(window[:-1], window[1:]))
        return (window[-1] - window[0]) / (len(window) - 1)


def _mnist_like(*batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Random binary images of MNIST's shape and share of lit pixels (13 %), ``[*batch, pixels]``."""
    pixels = math.prod(MNISTDataModule.image_shape)
    return (torch.rand(*batch, pixels, device=device) < 0.13).float()


def reference_loop(estimator, latent_dim: int, n_categories: int, steps: int, warmup: int, device: torch.device, root) -> float:
    """The authors' style of loop: torchvision MNIST with per-item transforms through a DataLoader,
    a plain Python optimization loop. Returns the median seconds per steady-state step."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Lambda(lambda x: (x > 0.5).float().view(-1))])
    loader = torch.utils.data.DataLoader(MNIST(str(root), train=True, transform=transform), batch_size=200,
                                         shuffle=True, drop_last=True)
    vae = CategoricalVAE(estimator, latent_dim=latent_dim, n_categories=n_categories)  # the paper's sizes and lr
    enc, dec = vae.encoder.to(device), vae.decoder.to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=vae.hparams.lr)
    timer = _StepTimer(device, warmup, steps)
    for i, (x, _) in enumerate(loader):
        timer.tick()
        if i == steps + warmup:
            break
        x = x.to(device)
        logits = enc(x).view(-1, latent_dim, n_categories)
        z = estimator(logits)
        log_q = torch.log_softmax(logits, -1)
        kl = (log_q.exp() * (log_q + math.log(n_categories))).sum((-1, -2))
        rec = torch.nn.functional.binary_cross_entropy_with_logits(dec(z.flatten(-2)), x, reduction="none").sum(-1)
        loss = (rec + kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the reference logs the loss every step
    return timer.per_step()


def catvae_loop(estimator, latent_dim: int, n_categories: int, steps: int, warmup: int, device: torch.device, root, logdir,
                fast_step: bool = False, exact_every: int = 1, null_step: bool = False,
                precision: str = "32-true", pipelined: bool = True) -> tuple[_StepTimer, bool]:
    """``catvae fit``'s training step: Lightning Trainer, CategoricalVAE, MNISTDataModule, TensorBoard logging,
    metrics and fit's callbacks included (validation off: it is not part of a step). ``null_step``: the
    fast path's whole step (forward, backward, Adam) is replaced by a no-op, leaving only the host work
    around it, with the progress bar on (drawn to /dev/null)."""
    timer = _StepTimer(device, warmup, steps, pipelined)

    class Tick(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            timer.tick()

        def on_train_end(self, *args) -> None:
            timer.tick()

    model = (_NullStepVAE if null_step else CategoricalVAE)(
        estimator, latent_dim=latent_dim, n_categories=n_categories, fast_step=fast_step or null_step,
        exact_nelbo_every_n_steps=exact_every)
    data = MNISTDataModule(str(root), download=False)
    # catvae fit's own callbacks (checkpoints every 1000 steps and at epoch ends: none inside the timed window)
    callbacks = [Tick(), *fit_callbacks(model.monitor), *default_callbacks(progress_bar=null_step)]
    trainer = L.Trainer(max_steps=steps + warmup, accelerator=device.type, devices=1, limit_val_batches=0,
                         precision=precision,
                         logger=TensorBoardLogger(logdir), default_root_dir=logdir, enable_progress_bar=null_step,
                         enable_model_summary=False, callbacks=callbacks, log_every_n_steps=50)
    with open(os.devnull, "w") as null, contextlib.ExitStack() as stack:
        if null_step:  # Lightning's bar draws to stdout
            stack.enter_context(contextlib.redirect_stdout(null))
        trainer.fit(model, data)
    runner = getattr(model, "_runner", None)
    return timer, bool(runner is not None and runner.captured)


def _training_setup(args: argparse.Namespace) -> tuple[torch.device, object]:
    """Validate the loop-timing arguments; the device and the MNIST root."""
    _at_least_one(args, "steps", "rounds")
    return _device(args.device), resolve_data_dir(args.data_dir)


def _at_least_one(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")


def bench_overhead(args: argparse.Namespace) -> None:
    device, root = _training_setup(args)
    latent_dim, n_categories = _shape(args.setting)
    timings = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as logdir:
            timings.append(catvae_loop("gumbel", latent_dim, n_categories, args.steps, args.warmup, device, root, logdir,
                                       null_step=True)[0])
    median = min(t.per_step(median=True) for t in timings)
    mean = min(t.per_step(median=False) for t in timings)
    print(f"host time per training step around a no-op step (catvae fit's loop, data, metrics, logging, callbacks, "
          f"checkpoints, progress bar), device {_device_name(device)}, torch {torch.__version__}, "
          f"{args.steps} steps, best of {args.rounds}:")
    print(f"  median step {median * 1e6:.0f} us; mean over the steps (logging steps and epoch ends with their "
          f"checkpoints included) {mean * 1e6:.0f} us = {mean * 300:.3f} s per epoch of 300 steps")


def bench_train(args: argparse.Namespace) -> None:
    device, root = _training_setup(args)
    names = _known(args.estimators or ["gumbel", "redge", "redge_max", "redge_cov"])
    settings = [_shape(s) for s in args.settings]
    # on CUDA a second pass of catvae's loop waits for the device at every step (the serialized column);
    # on CPU the two measurements coincide and one pass gives both
    serialized_pass = device.type == "cuda"
    # best (minimum) over rounds of each loop's time: robust to other load on a shared machine
    best: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for latent_dim, n_categories in settings:
            for name in names:
                torch.manual_seed(0)
                est = estimators.build(name)
                ref = reference_loop(est, latent_dim, n_categories, args.steps, args.warmup, device, root) * 300
                times = []
                for pipelined in (True, False) if serialized_pass else (True,):
                    with tempfile.TemporaryDirectory() as logdir:
                        timer, captured = catvae_loop(est, latent_dim, n_categories, args.steps, args.warmup, device,
                                                      root, logdir,
                                                      args.fast_step, args.exact_nelbo_every_n_steps,
                                                      precision=args.precision, pipelined=pipelined)
                    if args.fast_step and device.type == "cuda" and not captured:
                        raise RuntimeError(f"{name} L={latent_dim},K={n_categories}: the fast step was not captured "
                                           "in a CUDA graph")
                    times.append(timer.per_step() * 300)
                    if not serialized_pass:  # CPU: the same pass gives the median step
                        times.append(timer.per_step(median=True) * 300)
                ours, serial = times[0], times[-1]
                if args.rounds > 1:
                    print(f"round {r + 1}/{args.rounds} {name} L={latent_dim},K={n_categories}: reference {ref:.2f}s, "
                          f"catvae {ours:.2f}s",
                          file=sys.stderr, flush=True)
                old = best.get((latent_dim, n_categories, name), [ref, ours, serial])
                best[(latent_dim, n_categories, name)] = [min(old[0], ref), min(old[1], ours), min(old[2], serial)]
    print(f"seconds per epoch (300 steps of batch 200; {args.steps} steady-state steps, best of {args.rounds} "
          f"round(s)), device {_device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fast_step {args.fast_step}, exact_nelbo_every_n_steps {args.exact_nelbo_every_n_steps}, "
          f"catvae fit precision {args.precision} (reference loop: float32)")
    print("catvae fit: pipelined (the device is waited for once per window, as in an epoch of `catvae fit`); "
          "serialized: waiting at every step (median step; the same as pipelined on CPU)")
    print(f"{'estimator':<15}{'setting':<12}{'reference loop':>16}{'catvae fit':>12}{'speedup':>9}{'vs gumbel':>11}"
          f"{'serialized':>12}")
    for latent_dim, n_categories in settings:
        base = best[(latent_dim, n_categories, "gumbel" if "gumbel" in names else names[0])][1]
        for name in names:
            ref, ours, serial = best[(latent_dim, n_categories, name)]
            shape = f"L={latent_dim},K={n_categories}"
            print(f"{name:<15}{shape:<12}{ref:>15.2f}s{ours:>11.2f}s{ref / ours:>8.2f}x{ours / base:>10.2f}x"
                  f"{serial:>11.2f}s")


def _device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``: the name as CUDA prints it, for tables that report GPU figures."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def bench_step(args: argparse.Namespace) -> None:
    """The VAE's training step alone (forward, estimator, backward, fused Adam; no Lightning, no data
    loading), every estimator built side by side and timed in interleaved rounds, so that drifts in the
    machine's speed hit all of them alike; the ratio to Gumbel-ST is the median over rounds of the
    same-round ratio."""
    _at_least_one(args, "rounds", "inner")
    device = _device(args.device)
    names = _gumbel_first(args.estimators or estimators.available())
    print(f"training step per batch of 200 (forward, estimator, backward, fused Adam), device {device}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, exact_nelbo_every_n_steps "
          f"{args.exact_nelbo_every_n_steps}; median of {args.rounds} interleaved rounds of {args.inner} steps")
    print(f"{'estimator':<15}{'setting':<12}{'ms/step':>9}{'s/epoch':>9}{'vs gumbel':>11}")
    for latent_dim, n_categories in (_shape(s) for s in args.settings):
        torch.manual_seed(0)
        x = _mnist_like(200, device=device)
        steps = {}
        for name in names:
            model = CategoricalVAE(estimators.build(name), latent_dim=latent_dim, n_categories=n_categories,
                                   exact_nelbo_every_n_steps=args.exact_nelbo_every_n_steps)
            steps[name] = _vae_step(model.to(device), x)
        _interleaved(steps, 1, args.warmup, device)
        times = _interleaved(steps, args.rounds, args.inner, device, f"L={latent_dim},K={n_categories}")
        for name in names:
            t = statistics.median(times[name])
            ratio = _paired_ratio(times[name], times["gumbel"])
            print(f"{name:<15}{f'L={latent_dim},K={n_categories}':<12}{t * 1e3:>9.2f}{t * 300:>9.2f}{ratio:>10.2f}x")


#: the estimators of the paper's Table 3 (Table 5 defaults), which ``bench sweep`` cycles through to fill a group
def table3_estimators() -> list[str]:
    """The estimators of the GPU Table 3 sweep (``configs/compare/table3_gpu.yaml``: the paper's six and
    ReDGE-Max-Cov), in its order: the mix a batched group of ``bench sweep``/``cost`` holds."""
    return list(dict.fromkeys(run.name for run in load_spec(Path(config_path("compare/table3_gpu")))))


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--sizes {text!r}: expected group sizes >= 1, e.g. 1,7,21")
    return sizes


def bench_sweep(args: argparse.Namespace) -> None:
    """A group of R runs as one stacked model (``compare --batched``) against the same R runs stepped one after
    the other (what separate processes sharing the device amount to), in interleaved rounds: run-steps per
    second in aggregate and per run. The runs are Table 3's seven estimators in a spec's order (estimator-major:
    R = 21 is 3 seeds of each, consecutive, so each estimator is one call for its 3 runs), seeds 0..R-1; the
    step is the whole training step (forward, estimators, exact NELBO, backward, Adam) on one batch of 200."""
    _at_least_one(args, "rounds", "inner")
    device = _device(args.device)
    latent_dim, n_categories = _shape(args.setting)
    capture = args.fast_step and device.type == "cuda"
    print(f"batched group vs separate runs, L={latent_dim}, K={n_categories}, batch 200, device "
          f"{_device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'CUDA graph' if capture else 'eager'}; median of {args.rounds} interleaved rounds of {args.inner} steps")
    print(f"{'runs':>5}{'group ms/step':>15}{'separate ms':>13}{'group runs·steps/s':>20}{'separate':>10}"
          f"{'speed-up':>10}{'per run steps/s':>17}")
    for R in _sizes(args.sizes):
        tg, ts = _sweep_times(R, latent_dim, n_categories, device, args)
        print(f"{R:>5}{tg * 1e3:>15.2f}{ts * 1e3:>13.2f}{R / tg:>20.1f}{R / ts:>10.1f}{ts / tg:>9.2f}x{1 / tg:>17.1f}")


def _table3_runs(R: int, latent_dim: int, n_categories: int, **kwargs) -> list[CategoricalVAE]:
    """``R`` VAEs of Table 3's estimators in a spec's order (estimator-major), run ``r`` built under seed ``r``."""
    models, names = [], table3_estimators()
    for r in range(R):
        torch.manual_seed(r)
        models.append(CategoricalVAE(estimators.build(names[r * len(names) // R]), latent_dim=latent_dim,
                                     n_categories=n_categories, **kwargs))
    return models


def _sweep_times(R: int, latent_dim: int, n_categories: int, device: torch.device,
                 args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per step of a group of ``R`` runs, and of the same runs stepped one after the other."""
    capture = args.fast_step and device.type == "cuda"
    models = [m.to(device) for m in _table3_runs(R, latent_dim, n_categories, fast_step=args.fast_step)]
    x = _mnist_like(R, 200, device=device)
    group = StackedVAE(models).to(device)
    singles = [functools.partial(StepRunner(m.make_step(m.adam(capturable=capture)), capture=capture), x[r])
               for r, m in enumerate(models)]
    runner = StepRunner(group.make_step(group.adam(capturable=capture)), capture=capture,
                        generators=(lambda: group.streams.generators(device)) if capture else None)
    calls = {"group": functools.partial(runner, x), "separate": lambda: [s() for s in singles]}
    _interleaved(calls, 1, args.warmup, device)
    times = _interleaved(calls, args.rounds, args.inner, device, f"{R} runs, L={latent_dim},K={n_categories}")
    return statistics.median(times["group"]), statistics.median(times["separate"])


def bench_cost(args: argparse.Namespace) -> None:
    """What one training step of a batched group costs, counted here on any device, and what that predicts for a
    GPU: floating-point operations (``torch.utils.flop_counter``: the matmuls), ATen operations (each one kernel
    at least: in a CUDA graph they run back to back, ``--gap_us`` apart) and bytes written by them (read about
    as much again). Predicted seconds per step = max(FLOPs / ``--tflops``, 2 x bytes / ``--gbps``) + ops x gap;
    then minutes for ``--steps`` steps. A plan, not a measurement: ``bench sweep --fast_step`` measures it there."""
    from torch.utils.flop_counter import FlopCounterMode

    TorchDispatchMode = torch_dispatch_mode()

    class Count(TorchDispatchMode):  # every ATen op of the step and the bytes of its outputs
        ops = bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out)
                              if isinstance(t, torch.Tensor))
            return out

    R = args.runs
    print(f"one training step of a batched group of {R} runs (Table 3's estimators, estimator-major), batch 200, "
          f"counted on {_device_name(torch.device('cpu'))}; predicted for a GPU at {args.tflops} TFLOP/s, "
          f"{args.gbps} GB/s, {args.gap_us} us per kernel; {args.steps} steps")
    print(f"{'setting':>8}{'GFLOP/step':>12}{'ops/step':>10}{'MB written':>12}{'ms/step':>9}{'minutes':>9}")
    for setting in args.settings:
        latent_dim, n_categories = _shape(setting)
        group = StackedVAE(_table3_runs(R, latent_dim, n_categories))
        step = group.make_step(group.adam())
        x = _mnist_like(R, 200)
        step(x)  # the optimizer's state exists, as in every later step
        count, flops = Count(), FlopCounterMode(display=False)
        with flops, count:
            step(x)
        gflop, mb = flops.get_total_flops() / 1e9, count.bytes / 1e6
        seconds = max(gflop / (args.tflops * 1e3), 2 * mb / (args.gbps * 1e3)) + count.ops * args.gap_us * 1e-6
        print(f"{setting:>8}{gflop:>12.3f}{count.ops:>10}{mb:>12.0f}{seconds * 1e3:>9.2f}"
              f"{seconds * args.steps / 60:>9.1f}")


VARIANCE_ESTIMATORS = ("gumbel", "gumbel_rao:k=1", "gumbel_rao:k=10", "gumbel_rao:k=100", "rloo:n_samples=2",
                       "rloo:n_samples=8", "rloo:n_samples=32")


def _estimator_arg(text: str):
    """``name`` or ``name:key=value,key=value`` (values read as YAML scalars): ``(label, estimator)``."""
    name, _, rest = text.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--estimators {text!r}: expected name:key=value[,key=value]")
        kwargs[key] = yaml.safe_load(value)
    return text, estimators.build(name, **kwargs)


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--hidden {text!r}: expected positive layer sizes separated by commas, e.g. 512,256")
    return sizes


def bench_variance(args: argparse.Namespace) -> None:
    """The spread of each estimator's gradient on one fixed batch of the VAE (``callbacks.diagnostics``): its
    relative standard deviation (one draw) per parameter group, against a reference gradient (exact when
    ``K^L`` is small, else RLOO over ``--reference_samples``), and the variance ratio to the first estimator."""
    _at_least_one(args, "batch", "draws", "reference_samples")
    specs = [_estimator_arg(t) for t in args.estimators or VARIANCE_ESTIMATORS]
    latent_dim, n_categories = _shape(args.setting)
    with seeded(args.seed):
        data = None
        if args.ckpt_path:
            model, data = load_vae(args.ckpt_path)
        else:
            hidden = _hidden(args.hidden)
            model = CategoricalVAE("gumbel", latent_dim=latent_dim, n_categories=n_categories,
                                   encoder_hidden=hidden, decoder_hidden=hidden[::-1])
    model.eval()
    data = data or DataRecord(f"{MNISTDataModule.__module__}.MNISTDataModule", {"dataset": "mnist"})
    x = data.test_images(args.batch, args.data_dir, download=False)
    dataset = data.name
    groups = {name: list(child.parameters()) for name, child in model.named_children()
              if any(True for _ in child.parameters())}
    what = f"checkpoint {args.ckpt_path}" if args.ckpt_path else f"a freshly initialized VAE (seed {args.seed})"
    print(f"gradient spread on the first {args.batch} binarized {dataset} test images, L={model.latent_dim}, "
          f"K={model.n_categories}, {what}; {args.draws} draws per estimator, torch {torch.__version__}")
    rows, base = [], None
    for label, est in specs:
        with seeded(args.seed):
            logits, f = model.diagnostic_objective(x)
            stats, kind = gradient_diagnostics(est, logits, f, groups, n_draws=args.draws,
                                               reference_samples=args.reference_samples)
        base = base or stats
        rows.append((label, stats))
    names = list(rows[0][1])
    print(f"reference gradient: {kind}; rel_std = sqrt(tr Cov ĝ)/‖g‖ of one draw, variance ratio = "
          f"(rel_std / rel_std of {rows[0][0]})²; rel_bias floor ~ noise_floor")
    header = f"{'estimator':<22}" + "".join(f"{g + ' rel_std':>20}{'var ratio':>11}" for g in names) + \
        f"{'logits rel_bias':>17}{'logits cos':>12}"
    print(header)
    print("-" * len(header))
    for label, stats in rows:
        cells = "".join(f"{stats[g]['rel_std']:>20.4g}{(stats[g]['rel_std'] / base[g]['rel_std']) ** 2:>11.3f}"
                        for g in names)
        print(f"{label:<22}{cells}{stats['logits']['rel_bias']:>17.4g}{stats['logits']['cos']:>12.3f}")


def _vae_step(model, x: torch.Tensor):
    """One optimization step of ``model`` on ``x``: the model's whole step (forward, estimator,
    ``train/nelbo_exact`` if on, backward, fused Adam), run eagerly."""
    return functools.partial(model.make_step(model.adam()), x)


class _NullStepVAE(CategoricalVAE):
    """The VAE with its whole step replaced by a no-op (two constant outputs): what is left of ``catvae fit``'s
    step is the host work around it (``catvae bench overhead``)."""

    def make_step(self, optimizer):
        out = {"loss": torch.tensor(100.0, device=self.device), "nelbo_exact": torch.tensor(101.0, device=self.device)}
        return lambda x: {k: v.clone() for k, v in out.items()}


