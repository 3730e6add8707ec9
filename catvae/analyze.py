r"""``catvae analyze``: how ``t₁`` and ``n`` trade bias against variance in the ReDGE family (paper §3.2).

Proposition 3.1 and Fig. 1 argue that as ``t₁ → 0`` the DDIM map becomes piecewise constant in ``θ``
(its Jacobian, and so the gradient, vanishes), while as ``t₁ → 1`` the relaxed sample tends to
``softmax(φ)`` and the estimator to Straight-Through, with its bias. The paper never tabulates the trade-off;
this command measures it for a given ``π`` and objective, against the exact gradient.

For a factorized categorical ``π = softmax(φ)``, ``φ ∈ R^{L×K}``, and an objective ``f`` of one-hot
``x ∈ {0,1}^{L×K}``, each configuration (estimator, ``n_steps``, ``t₁``) draws ``M`` independent samples
through the estimator, each with its gradient ``ĝ_m = ∇_φ f(X_m)`` back-propagated through the estimator,
and reports:

* ``tv``: ``(1/L) Σ_l TV(π̂_l, π_l)``, the total-variation distance between the empirical law of the hard
  samples' ``l``-th coordinate and ``π_l``, averaged over ``l`` (every estimator here moves each
  coordinate independently, so the marginals are the law); ``tv_floor`` is its Monte-Carlo floor for exact
  draws, ``(1/L) Σ_l ½ Σ_k sqrt(2 π_lk (1 − π_lk) / (π M))`` (the mean of ``|p̂ − p|`` under a normal
  approximation of the binomial);
* ``rel_bias``, ``rel_std``, ``noise_floor``, ``cos``, ``cos_mean``: the gradient statistics of
  :mod:`callbacks.diagnostics` against the exact ``∇_φ E_π f`` (enumeration of all ``K^L`` configurations,
  :mod:`estimators.exact`): ``‖ḡ − g‖/‖g‖``, ``sqrt(tr Cov ĝ)/‖g‖`` of one draw, the bias's Monte-Carlo floor,
  the mean cosine of one draw with ``g``, and the cosine of the mean.

Straight-Through, Gumbel-Softmax ST and ReinMax (``--references``: any registered estimator, e.g. ``gumbel_rao``
or ``rloo``), at their defaults (``--tau`` sets the temperature of those that have one), are measured once as
references: horizontal lines in the figure.

A trained VAE's posterior (``--ckpt_path``, ``--example i``): ``π = q(z|x_i)`` of the ``i``-th test image and
``f(z) = −log p(x_i|z)``, the reconstruction term of its negative ELBO (the KL term is analytic in ``φ``, the
same for every estimator). The exact gradient enumerates the ``K^L`` codes, so this is for small latent spaces
(``K^L ≤ 2^20``), not the paper's settings.

Objectives (``--objective``): ``quadratic`` (default), ``f(x) = ½ vec(x)ᵀ A vec(x) + bᵀ vec(x)`` with ``A``
symmetric and ``b`` drawn once from ``--seed`` (a smooth non-linear function, so that Straight-Through is
biased); ``polynomial``: the paper's eq. (16), ``f(x) = (1/L) Σ_l |x_l2 − c|^p`` with ``c = 0.45`` (``K = 2``).

Outputs in ``--out``: ``analysis.csv`` (one row per configuration), ``analysis.md`` (the same as a table, with
the command and ``π``) and ``analysis.png`` (the four statistics against ``t₁``, one colour per estimator,
one line style per ``n_steps``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import estimators
from callbacks.diagnostics import summarize
from estimators import exact
from estimators.base import ConfigError
from estimators.rng import seeded

from .benchmarks import BENCHMARKS
from .runs import make_folder
from .sample import load_vae
from .tools import VARIANTS

__all__ = ["analyze", "law_error", "make_objective", "parse_probs", "polynomial_task"]

COLUMNS = ("estimator", "n_steps", "t_1", "tv", "tv_floor", "rel_bias", "noise_floor", "rel_std", "cos", "cos_mean")
STATS = (("tv", "sample law: TV to π"), ("rel_bias", "gradient: relative bias"),
         ("rel_std", "gradient: relative std (one draw)"), ("cos", "gradient: cosine to exact (one draw)"))

Objective = Callable[[Tensor], Tensor]


def parse_probs(text: str) -> Tensor:
    """``π`` from ``"0.7,0.2,0.1"`` (one coordinate) or ``"0.7,0.3;0.4,0.6"`` (``;`` between coordinates),
    as ``[L, K]`` float64; each row must be positive and sum to 1 (within 1e-6)."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
    except ValueError:
        raise ConfigError(f"--probs {text!r}: not a list of numbers; write e.g. --probs 0.7,0.2,0.1 or 0.7,0.3;0.4,0.6") from None
    if len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        raise ConfigError(f"--probs {text!r}: every coordinate needs the same number K >= 2 of probabilities")
    probs = torch.tensor(rows, dtype=torch.float64)
    if not torch.isfinite(probs).all() or (probs <= 0).any() or ((probs.sum(-1) - 1).abs() > 1e-6).any():
        raise ConfigError(f"--probs {text!r}: each coordinate's probabilities must be finite, > 0 and sum to 1")
    return probs


def polynomial_task(L: int, p: float):
    """The polynomial benchmark's task (its objective ``f``, eq. 16) on the data module's instance of length ``L``
    with its default ``c`` (the paper's)."""
    bench = BENCHMARKS["polynomial"]  # the benchmark's own classes, found through the registry
    return bench.task_class("st", p=p).attach(bench.data_class(length=L).make_problem())


def make_objective(name: str, L: int, K: int, seed: int, p: float = 2.0) -> Objective:
    """``f``: one-hot (or relaxed) ``[..., L, K]`` to ``[...]`` (module docstring)."""
    if name == "polynomial":
        if K != 2:
            raise ConfigError(f"--objective polynomial is the paper's eq. (16) on Bernoulli coordinates: it needs K=2, got K={K}")
        return polynomial_task(L, p).f
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(L * K, L * K, generator=generator, dtype=torch.float64)
    a, b = (g + g.T) / math.sqrt(2 * L * K), torch.randn(L * K, generator=generator, dtype=torch.float64)

    def quadratic(x: Tensor) -> Tensor:
        v = x.flatten(-2)
        return 0.5 * ((v @ a) * v).sum(-1) + v @ b

    return quadratic


def law_error(samples: Tensor, probs: Tensor) -> tuple[float, float]:
    """``(tv, tv_floor)`` of hard samples ``[M, L, K]`` against ``π`` ``[L, K]`` (module docstring)."""
    m = samples.shape[0]
    tv = 0.5 * (samples.mean(0) - probs).abs().sum(-1).mean()
    floor = 0.5 * (2 * probs * (1 - probs) / (math.pi * m)).sqrt().sum(-1).mean()
    return tv.item(), floor.item()


def measure(estimator, logits: Tensor, f: Objective, reference: Tensor, draws: int, seed: int,
            chunk: int = 8192) -> dict[str, float]:
    """The statistics of one estimator from ``draws`` independent samples and gradients (module docstring)."""
    L, K = logits.shape
    grads, samples = [], []
    with seeded(seed):
        for start in range(0, draws, chunk):
            phi = logits.expand(min(chunk, draws - start), L, K).clone().requires_grad_(True)

            def objective(x: Tensor) -> Tensor:  # f, keeping the hard samples for the law
                samples.append(x.detach().reshape(-1, L, K))
                return f(x)

            (g,) = torch.autograd.grad(estimator.surrogate(phi, objective).sum(), phi)
            grads.append(g.flatten(1))
    g = torch.cat(grads)
    tv, floor = law_error(torch.cat(samples), logits.softmax(-1))
    cos = torch.nn.functional.cosine_similarity(g, reference[None], dim=1, eps=1e-30).mean().item()
    return {"tv": tv, "tv_floor": floor, **summarize(reference, g.mean(0), g.var(0).sum(), cos, draws)}


def analyze(probs: Tensor, f: Objective, t_1s: list[float], n_steps: list[int], variants: list[str],
            references: list[str], draws: int, seed: int, tau: float | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per configuration: the references (``n_steps``/``t_1`` empty), then every variant × ``n`` ×
    ``t₁``; each configuration uses the noise of ``seed``."""
    logits = probs.log()
    reference = exact.gradient(f, logits).flatten()
    configs = [(name, None, None, {"tau": tau} if tau is not None and "tau" in estimators.build(name).hparams() else {})
               for name in references]
    configs += [(name, n, t, {"n_steps": n, "t_1": t}) for name in variants for n in n_steps for t in t_1s]
    rows = []
    for i, (name, n, t, kwargs) in enumerate(configs, 1):
        est = estimators.build(name, **kwargs)
        rows.append({"estimator": name, "n_steps": n, "t_1": t,
                     **measure(est, logits, f, reference, draws, seed)})
        if progress:
            r = rows[-1]
            progress(f"[{i}/{len(configs)}] {name}" + ("" if n is None else f" n={n} t_1={t:.3g}")
                     + f": tv {r['tv']:.4f}, rel_bias {r['rel_bias']:.3f}, rel_std {r['rel_std']:.3f}, cos {r['cos']:.3f}")
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_table(rows: list[dict], out: Path, header: str) -> tuple[Path, Path]:
    csv_path, md_path = out / "analysis.csv", out / "analysis.md"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in COLUMNS} for r in rows)
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in COLUMNS) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot(rows: list[dict], out: Path, title: str) -> Path:
    # imported here: matplotlib adds 0.6-0.8 s to the start of every `catvae` command on this CPU
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["estimator"] for r in rows if r["n_steps"] is not None))
    ns = sorted({r["n_steps"] for r in rows if r["n_steps"] is not None})
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (key, label) in zip(axes.flat, STATS):
        for vi, name in enumerate(variants):
            for ni, n in enumerate(ns):
                pts = sorted((r["t_1"], r[key]) for r in rows if r["estimator"] == name and r["n_steps"] == n)
                if pts:
                    ax.plot(*zip(*pts), styles[ni % len(styles)], marker="os^Dv"[vi % 5], ms=4, mfc="none",
                            color=colors[vi % len(colors)], label=f"{name} n={n}")
        for ri, r in enumerate(r for r in rows if r["n_steps"] is None):
            ax.axhline(r[key], color="0.35", ls=styles[ri % len(styles)], lw=1, label=f"{r['estimator']} (reference)")
        if key == "tv":
            floor = max(r["tv_floor"] for r in rows)
            ax.axhline(floor, color="red", lw=0.8, alpha=0.6, label="TV floor (exact draws)")
            ax.set_yscale("log")
        if key in ("rel_bias", "rel_std"):  # a vanishing gradient (t_1 -> 0, Prop. 3.1) leaves through the bottom
            ax.set_yscale("log")
            top = max((r[key] for r in rows if math.isfinite(r[key])), default=1.0)
            ax.set_ylim(1e-3, max(2 * top, 1e-2))
        ax.set_xlabel("t₁")
        ax.set_ylabel(textwrap.fill(label, 40), fontsize=9)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 0.96))
    path = out / "analysis.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _floats(text: str) -> list[float]:
    out = []
    for v in text.split(","):
        try:
            out.append(float(v.split("/")[0]) / float(v.split("/")[1]) if "/" in v else float(v))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--t1 {text!r}: expected numbers in (0, 1] separated by commas "
                              "(fractions like 1/3 allowed)") from None
    if not all(0 < v <= 1 for v in out):
        raise ConfigError(f"--t1 {text!r}: every t_1 must lie in (0, 1]")
    return out


def _ints(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--n_steps {text!r}: expected integers >= 2 separated by commas") from None
    if not all(v >= 2 for v in out):
        raise ConfigError(f"--n_steps {text!r}: every n_steps must be >= 2 (n = 2, t_1 = 1 is Straight-Through)")
    return out


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    bad = [v for v in names if v not in allowed]
    if bad:
        raise ConfigError(f"{flag}: unknown estimator(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    return names


def vae_posterior(path: str, example: int, trust: bool = False, data_dir: str | None = None) -> tuple[Tensor, Objective, str]:
    """``(π [L, K] float64, f, description)`` for test image ``example`` of a trained VAE (module docstring)."""
    model, data = load_vae(path, trust)
    if example < 0:
        raise ConfigError(f"--example {example}: must be >= 0 (an index into the test images)")
    x = data.test_images(example + 1, data_dir)[example]
    with torch.no_grad():
        probs = torch.softmax(model.encode(x[None])[0].double(), -1)

    def f(z: Tensor) -> Tensor:  # −log p(x|z) for codes [..., L, K]
        return model.reconstruction(x.expand(*z.shape[:-2], x.shape[-1]), z.float()).double()

    return probs, f, f"−log p(x|z) of {data.name} test image {example}, posterior of {path}"


def run(args: argparse.Namespace) -> int:
    f = None
    if args.ckpt_path:
        probs, f, objective = vae_posterior(args.ckpt_path, args.example, args.trust_checkpoint, args.data_dir)
    elif args.probs:
        probs = parse_probs(args.probs)
    else:
        if args.L < 1 or args.K < 2:
            raise ConfigError(f"--L {args.L} --K {args.K}: need L >= 1 and K >= 2")
        with seeded(args.seed):
            probs = torch.softmax(torch.randn(args.L, args.K, dtype=torch.float64) * args.scale, -1)
    L, K = probs.shape
    if K**L > exact.MAX_CONFIGS:
        fix = "use a model with a smaller latent space" if args.ckpt_path else "lower --L or --K"
        raise ConfigError(f"K^L = {K}^{L} is too many configurations for the exact gradient "
                          f"(max {exact.MAX_CONFIGS}); {fix}")
    if args.draws < 2:
        raise ConfigError(f"--draws {args.draws}: need at least 2 draws")
    t_1s, ns = _floats(args.t1), _ints(args.n_steps)
    variants = _names(args.estimators, VARIANTS, "--estimators")
    references = _names(args.references, tuple(estimators.available()), "--references")
    if f is None:
        f = make_objective(args.objective, L, K, args.seed, args.p)
        objective = args.objective + (f" (p={args.p})" if args.objective == "polynomial" else f" (seed {args.seed})")
    out = make_folder(Path(args.out), "--out")
    started = time.time()
    rows = analyze(probs, f, t_1s, ns, variants, references, args.draws, args.seed, args.tau,
                   progress=None if args.quiet else lambda s: print(s, file=sys.stderr, flush=True))
    command = "catvae analyze " + shlex.join(args.argv)
    header = (f"# t_1 / n_steps analysis\n\nCommand: `{command}`  \nπ (L={L}, K={K}): `{json.dumps(probs.tolist())}`  \n"
              f"objective: {objective}; {args.draws} draws per configuration; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s")
    csv_path, md_path = write_table(rows, out, header)
    png = plot(rows, out, f"L={L}, K={K}, {objective}, {args.draws} draws per point")
    print(f"catvae analyze: {len(rows)} configurations -> {csv_path}, {md_path}, {png}")
    return 0


