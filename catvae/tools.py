"""The tools' command lines (``catvae analyze|bench|compare|sample``), without their heavy imports.

``catvae TOOL --help`` and a tool's argument errors come from here before torch, Lightning or jsonargparse are
imported (~10 s of CPU on a small machine; ``catvae sample --help``: 9.2 s of CPU before, see README); each
parser names its function as ``"module:function"``, imported only to run it. The tools' long options are
spelled as LightningCLI spells its own (``--dry_run``); ``--dry-run`` is read the same (:func:`underscored`).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

__all__ = ["CONFIGS", "ESTIMATORS", "QUICK_STEPS", "SUBCOMMANDS", "add_trust_flag", "build_parser", "config_path",
           "config_paths", "function", "overview", "spec_path", "underscored"]

#: the configs that ship with catvae (in a source checkout a link to the repository's ``configs/``)
CONFIGS = Path(__file__).resolve().parent / "configs"


def spec_path(name: str) -> str:
    """A compare spec by path, else by name among the shipped specs (``table3`` is ``configs/compare/table3.yaml``),
    else as :func:`config_path` finds it."""
    found = config_path(name)
    return found if found != name or Path(name).exists() else config_path(f"compare/{name}")


def config_path(name: str) -> str:
    """A config file or compare spec by path, else by name among the shipped :data:`CONFIGS`: ``mnist/l48_k2``,
    ``mnist/l48_k2.yaml`` and ``configs/mnist/l48_k2.yaml`` (the README's spelling, from any directory) all name
    ``<catvae>/configs/mnist/l48_k2.yaml``. Unchanged when nothing matches (the caller reports it)."""
    if Path(name).exists():
        return name
    rest = name[len("configs/"):] if name.startswith("configs/") else name
    for candidate in (CONFIGS / rest, CONFIGS / f"{rest}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return name


def config_paths(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config``/``-c`` value resolved by :func:`config_path`."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, config_path(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + config_path(arg[len("--config="):])
        out.append(arg)
        i += 1
    return out


#: the registered estimators (``estimators.available()``; a test keeps the two equal)
ESTIMATORS = "gumbel, gumbel_rao, redge, redge_cov, redge_max, redge_max_cov, reinmax, rloo, st"
#: what ``compare --quick`` trains when the spec has no ``quick:`` section: ~1 minute on a 2-core CPU
QUICK_STEPS = 30
#: ``catvae analyze``'s default grid
VARIANTS = ("redge", "redge_max", "redge_cov", "redge_max_cov")
REFERENCES = ("st", "gumbel", "reinmax")
DEFAULT_T1 = (0.02, 0.05, 0.1, 0.2, 1 / 3, 0.5, 0.7, 0.9)
DEFAULT_N = (3, 4, 10)
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)"
COMPARE_DESCRIPTION = (
    "Run estimators x settings x seeds through catvae fit/test (each run in its own process, resumable) and "
    "tabulate them: results.csv, results.md (mean ± std over seeds), curves_*.png. The spec's format is in "
    "configs/compare/*.yaml and the README.")

#: every subcommand of ``catvae`` and what it does (``catvae --help``)
SUBCOMMANDS = {
    "fit": "train a model (LightningCLI: --config FILE, --model.*, --data.*, --trainer.*; --help for more)",
    "validate": "evaluate a checkpoint on the validation data (--ckpt_path last|best|FILE)",
    "test": "evaluate a checkpoint on the test data (--ckpt_path last|best|FILE)",
    "predict": "run the model's predict step on a checkpoint",
    "compare": "estimators x settings x seeds from a YAML spec, tabulated (--batched, --shard, --collect)",
    "bench estimators": "forward+backward time of each estimator at the VAE shapes",
    "bench step": "the VAE's training step alone, estimators interleaved: ratio to Gumbel-ST",
    "bench train": "reference training loop vs catvae fit's step, per epoch",
    "bench overhead": "host time per step of catvae fit's loop around a no-op step",
    "bench sweep": "a batched group of R runs vs the same runs stepped separately",
    "bench cost": "FLOPs, ops and bytes of one batched group step, and the GPU time they predict",
    "bench variance": "gradient spread of estimators on one VAE batch",
    "analyze": "t_1 / n_steps sweep of the ReDGE family: sample-law error, gradient bias and spread",
    "sample": "prior samples and reconstructions of a trained VAE as PNG grids",
    "tune": "every estimator at its own best hyperparameters: an Optuna study per estimator from a YAML spec",
}


def overview() -> str:
    """``catvae --help``: every subcommand, one line each."""
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = ["usage: catvae SUBCOMMAND [options]   (catvae SUBCOMMAND --help for its options)", "",
             "catvae: categorical VAEs and gradient estimators for discrete latents.", "", "subcommands:"]
    lines += [f"  {name:<{width}}{text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Training, e.g.: catvae fit --config configs/mnist/l48_k2.yaml --config configs/estimators/redge_cov.yaml",
              f"Estimators (--model.estimator NAME): {ESTIMATORS}",
              "Exit status: 0 done, 1 diverged or a bug, 2 bad input (one 'catvae: error:' line), 130/143 stopped by "
              "Ctrl-C/SIGTERM (after writing last.ckpt)."]
    return "\n".join(lines)


class ToolParser(argparse.ArgumentParser):
    """argparse that raises its errors (one line, from :func:`catvae.runner.handle`) instead of printing the
    usage and exiting."""

    def error(self, message: str):
        raise argparse.ArgumentError(None, message)


def underscored(argv: list[str]) -> list[str]:
    """The tools' long options spelled as LightningCLI spells its own (``--dry_run``, ``--n_steps``): a hyphen
    inside an option name (``--dry-run``) is read as an underscore, so both spellings work everywhere."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = f"--{name.replace('-', '_')}{eq}{value}"
        out.append(arg)
    return out


def build_parser() -> ToolParser:
    parser = ToolParser(prog="catvae", description="catvae tooling")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ToolParser)
    _bench(sub)
    _compare(sub)
    _analyze(sub)
    _sample(sub)
    _tune(sub)
    return parser


def function(name: str):
    """The function a parser names (``"catvae.sample:run"``), imported now."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def add_trust_flag(parser) -> None:
    """``--trust_checkpoint`` of a tool, spelled as ``catvae fit`` spells it: ``--trust_checkpoint true`` (or
    ``false``), or the bare flag for ``true``."""

    def boolean(text: str) -> bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(text)

    boolean.__name__ = "true or false"  # argparse's "invalid <type> value" names it
    parser.add_argument("--trust_checkpoint", nargs="?", const=True, default=False, type=boolean, metavar="true|false",
                        help="open the checkpoint with PyTorch's full unpickler, which runs any code stored in the file "
                             "(only for files you trust): --trust_checkpoint [true|false]")


def _bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print timing tables")
    bsub = p.add_subparsers(dest="bench", required=True)
    e = bsub.add_parser("estimators", help="forward+backward time of each estimator at the VAE shapes")
    e.add_argument("--estimators", nargs="*", help=f"default: all ({ESTIMATORS})")
    e.add_argument("--shapes", nargs="*", help="LxK shapes, default: 48x2 30x10 32x64")
    e.add_argument("--batch", type=int, default=200)
    e.add_argument("--device", default=None, help=DEVICE_HELP)
    e.add_argument("--repeats", type=int, default=7)
    e.add_argument("--inner", type=int, default=50)
    e.add_argument("--unfused", action="store_true", help="also time the plain-autograd ReDGE implementation")
    e.set_defaults(func="catvae.bench:bench_estimators")
    _add_train_parser(bsub)


def _add_timing_args(p: argparse.ArgumentParser, steps: int, warmup: int, rounds: int) -> None:
    p.add_argument("--steps", type=int, default=steps, help="timed steps per loop (after warm-up)")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--rounds", type=int, default=rounds, help="repeat everything; report the best round of each loop")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--data_dir", default=None, help="default: $CATVAE_DATA_DIR, else ./data")


def _add_train_parser(bsub) -> None:
    t = bsub.add_parser("train", help="reference training loop vs catvae fit's step, per epoch")
    t.add_argument("--estimators", nargs="*", help="default: gumbel redge redge_max redge_cov")
    t.add_argument("--settings", nargs="*", default=["48x2", "32x64"], help="LxK latent shapes")
    _add_timing_args(t, steps=60, warmup=10, rounds=1)
    t.add_argument("--fast_step", action="store_true", help="catvae fit with --model.fast_step (CUDA graph on GPU)")
    t.add_argument("--exact_nelbo_every_n_steps", type=int, default=1,
                   help="catvae fit's train/nelbo_exact diagnostic: 1 (default, as in fit) or 0 (off; the reference "
                        "loop has none; ReDGE pays an extra decoder pass for it)")
    t.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed", "64-true"),
                   help="catvae fit's --trainer.precision (the reference loop stays float32); bf16-mixed is ~2x "
                        "faster matmuls on CPUs with AVX512-BF16/AMX")
    t.set_defaults(func="catvae.bench:bench_train")
    s = bsub.add_parser("step", help="the VAE's training step alone, estimators interleaved: ratio to Gumbel-ST")
    s.add_argument("--estimators", nargs="*", help=f"default: all ({ESTIMATORS})")
    s.add_argument("--settings", nargs="*", default=["48x2", "32x64"], help="LxK latent shapes")
    s.add_argument("--rounds", type=int, default=15)
    s.add_argument("--inner", type=int, default=8, help="steps per estimator and round")
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--device", default=None, help=DEVICE_HELP)
    s.add_argument("--exact_nelbo_every_n_steps", type=int, default=0, choices=(0, 1),
                   help="0 (default): the estimator's own cost; 1: with fit's default train/nelbo_exact diagnostic")
    s.set_defaults(func="catvae.bench:bench_step")
    v = bsub.add_parser("variance", help="gradient spread of estimators on one VAE batch (relative std, variance "
                                         "ratio to the first), e.g. Gumbel-Rao's k and RLOO's S")
    v.add_argument("--estimators", nargs="*", help="name or name:key=value,... (default: gumbel, gumbel_rao "
                                                   "k=1,10,100, rloo n_samples=2,8,32)")
    v.add_argument("--setting", default="48x2", help="LxK latent shape of a fresh model (default 48x2)")
    v.add_argument("--hidden", default="512,256", help="encoder hidden sizes of a fresh model, the decoder's reversed "
                                                        "(default: the paper's 512,256)")
    v.add_argument("--ckpt_path", default=None, help="a trained CategoricalVAE checkpoint instead of a fresh model")
    v.add_argument("--batch", type=int, default=16, help="test images in the fixed batch")
    v.add_argument("--draws", type=int, default=200, help="gradient draws per estimator")
    v.add_argument("--reference_samples", type=int, default=4000, help="RLOO samples of the reference gradient")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--data_dir", default=None, help="default: $CATVAE_DATA_DIR, else ./data")
    v.set_defaults(func="catvae.bench:bench_variance")
    w = bsub.add_parser("sweep", help="a batched group of R runs (compare --batched) vs the same runs stepped "
                                      "separately: aggregate and per-run steps/s")
    w.add_argument("--sizes", default="1,7,21", help="group sizes (default 1,7,21; 35 = Table 3 with 5 seeds)")
    w.add_argument("--setting", default="48x2", help="LxK latent shape (default 48x2)")
    w.add_argument("--rounds", type=int, default=5)
    w.add_argument("--inner", type=int, default=5, help="steps per round")
    w.add_argument("--warmup", type=int, default=3)
    w.add_argument("--device", default=None, help=DEVICE_HELP)
    w.add_argument("--fast_step", action="store_true", help="capture each step in a CUDA graph (on a GPU)")
    w.set_defaults(func="catvae.bench:bench_sweep")
    c = bsub.add_parser("cost", help="FLOPs, ops and bytes of one batched group step, and the GPU time they predict")
    c.add_argument("--settings", nargs="+", default=["48x2", "30x10", "32x64"], help="LxK latent shapes")
    c.add_argument("--runs", type=int, default=35, help="runs in the group (default 35: Table 3 with 5 seeds)")
    c.add_argument("--steps", type=int, default=60000, help="steps of the prediction (default 60000)")
    c.add_argument("--tflops", type=float, default=25.0, help="sustained float32 TFLOP/s of the GPU's batched "
                                                              "matmuls (default 25: ~40%% of an H100/H200's 67)")
    c.add_argument("--gbps", type=float, default=2400.0, help="sustained memory GB/s (default 2400: ~50%% of an "
                                                              "H200's 4.8 TB/s)")
    c.add_argument("--gap_us", type=float, default=2.5, help="microseconds per kernel in a replayed CUDA graph")
    c.set_defaults(func="catvae.bench:bench_cost")
    o = bsub.add_parser("overhead", help="host time per step of catvae fit's loop around a no-op step (the floor "
                                         "of a CUDA-graph epoch)")
    o.add_argument("--setting", default="48x2", help="LxK latent shape")
    _add_timing_args(o, steps=600, warmup=50, rounds=3)
    o.set_defaults(func="catvae.bench:bench_overhead")


def _compare(subparsers) -> None:
    p = subparsers.add_parser("compare", help="run estimators × settings × seeds and tabulate the results",
                              description=COMPARE_DESCRIPTION)
    p.add_argument("spec", type=spec_path, help="the sweep's YAML spec: a file, or a shipped spec by name (table3, "
                   "quick: configs/compare/*.yaml)")
    p.add_argument("--out", help="results folder (default: results/<spec name>[_quick])")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"a tiny budget ({QUICK_STEPS} steps, 1000 training images, small eval) to check the pipeline")
    p.add_argument("--steps", type=int, help="override the spec's training steps per run")
    p.add_argument("--seeds", help="override the spec's seeds, e.g. 0,1")
    p.add_argument("--settings", help="run (and tabulate) only these of the spec's settings, e.g. l48_k2 or "
                                      "l48_k2,l30_k10; --collect without it assembles the whole table")
    p.add_argument("--dry_run", action="store_true", help="print the fit commands (with --batched: the groups) and exit")
    p.add_argument("--shard", help="i/N: run only the runs whose index in the spec is i mod N (a job array over N "
                                   "machines; no table is written)")
    p.add_argument("--collect", nargs="*", metavar="DIR",
                   help="train nothing: assemble --out's table from the finished runs in --out and these folders "
                        "(the shards' --out)")
    p.add_argument("--batched", action="store_true",
                   help="train the runs of each setting together as one stacked model in one process (one group at a "
                        "time; the results folder is the same as without it)")
    p.add_argument("--group_size", type=int,
                   help="with --batched: at most this many runs per group (default: as many as fit in memory)")
    p.add_argument("--progress_every", type=float, default=60.0, metavar="SECONDS",
                   help="show each running run's (or group's) latest step, steps/s, ETA and loss every SECONDS "
                        "(default 60; 0: only finished runs); the runs' log.txt get a line as often")
    p.set_defaults(func="catvae.compare:compare")


def _analyze(sub) -> None:
    p = sub.add_parser("analyze", help="t_1 / n_steps sweep of the ReDGE family: sample-law error and gradient "
                                       "bias / spread / alignment against the exact gradient (CSV, table, PNG)")
    p.add_argument("--out", required=True, help="output folder (analysis.csv, analysis.md, analysis.png)")
    p.add_argument("--probs", help="π as 0.7,0.2,0.1 (one coordinate) or 0.7,0.3;0.4,0.6 (';' between coordinates); "
                                   "default: a random π of shape --L x --K")
    p.add_argument("--ckpt_path", help="a trained CategoricalVAE with K^L <= 2^20: π = q(z|x) of one test image and "
                                       "f = −log p(x|z) (instead of --probs / --objective)")
    p.add_argument("--example", type=int, default=0, help="with --ckpt_path: the test image's index (default 0)")
    add_trust_flag(p)
    p.add_argument("--data_dir", default=None, help="with --ckpt_path: default $CATVAE_DATA_DIR, else ./data")
    p.add_argument("--L", type=int, default=2, help="number of coordinates of a random π (default 2)")
    p.add_argument("--K", type=int, default=4, help="categories of a random π (default 4)")
    p.add_argument("--scale", type=float, default=1.5, help="std of the random logits (larger: peakier π)")
    p.add_argument("--objective", choices=("quadratic", "polynomial"), default="quadratic")
    p.add_argument("--p", type=float, default=2.0, help="exponent of --objective polynomial (§4.1: 1.5, 2, 3)")
    p.add_argument("--t1", default=",".join(f"{v:.4g}" if v != 1 / 3 else "1/3" for v in DEFAULT_T1),
                   help="t_1 values, comma-separated (fractions allowed)")
    p.add_argument("--n_steps", default=",".join(map(str, DEFAULT_N)), help="n_steps values, comma-separated")
    p.add_argument("--estimators", default=",".join(VARIANTS), help="ReDGE variants to sweep")
    p.add_argument("--references", default=",".join(REFERENCES),
                   help="estimators drawn as horizontal lines, at their defaults (any registered name, e.g. "
                        "gumbel_rao or rloo; '' for none)")
    p.add_argument("--tau", type=float, default=None, help="temperature of the references (default: each one's own)")
    p.add_argument("--draws", type=int, default=4000, help="samples and gradients per configuration")
    p.add_argument("--seed", type=int, default=0, help="seeds π, the objective and the noise")
    p.add_argument("--quiet", action="store_true", help="no per-configuration progress lines")
    p.set_defaults(func="catvae.analyze:run")


def _tune(sub) -> None:
    p = sub.add_parser("tune", help=SUBCOMMANDS["tune"],
                       description="Search each estimator's hyperparameters (a spec's space: per estimator, ranges and "
                                   "log scales) with Optuna's TPE sampler and median pruning; every trial is an "
                                   "ordinary run. Rerunning the command continues the studies.")
    p.add_argument("spec", type=spec_path, help="the tune spec (YAML: a compare spec's keys, or base: one, plus space, "
                                                "trials, metric, direction, pruning); a file, or a shipped one by name")
    p.add_argument("--out", help="results folder (default: results/tune_<spec name>[_quick])")
    p.add_argument("--storage", help="an Optuna RDB URL (e.g. postgresql+psycopg://user@host/db) that workers on several "
                                     "machines share; default: a journal file in --out")
    p.add_argument("--trials", type=int, help="override the spec's trials per estimator")
    p.add_argument("--quick", action="store_true", help="the spec's quick budget (its quick: steps and arguments)")
    p.add_argument("--steps", type=int, help="override the training steps per trial")
    p.add_argument("--progress_every", type=float, default=60.0, metavar="SECONDS",
                   help="show the running trial's latest step every SECONDS (default 60; 0: never)")
    p.add_argument("--confirm", action="store_true",
                   help="then re-run every estimator at its default and its best point with fresh seeds (the spec's "
                        "confirm_seeds, default 100,101,102) as one compare per setting (confirm_<setting>/), and "
                        "tabulate default vs tuned vs gain (confirm.md)")
    p.add_argument("--parallel", type=int, default=1, help="with --confirm: its runs at a time (default 1)")
    p.set_defaults(func="catvae.tune:run")


def _sample(sub) -> None:
    p = sub.add_parser("sample", help="prior samples and reconstructions of a trained VAE as PNG grids")
    p.add_argument("--ckpt_path", required=True, help="a CategoricalVAE checkpoint (last.ckpt, best-*.ckpt)")
    p.add_argument("-n", type=int, default=64, help="images per grid (default 64)")
    p.add_argument("--out", default="samples.png", help="prior samples PNG; reconstructions go next to it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None, help="default: $CATVAE_DATA_DIR, else ./data")
    add_trust_flag(p)
    p.set_defaults(func="catvae.sample:run")
