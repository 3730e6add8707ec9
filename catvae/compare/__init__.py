r"""``catvae compare SPEC.yaml``: run estimators × settings × seeds through ``catvae fit``/``test`` and tabulate.

A spec (see ``configs/compare/*.yaml``)::

    steps: 60000                       # training steps of every run (--trainer.max_steps)
    seeds: [0, 1, 2]
    settings:                          # name: config file(s) (a path or a list); or a list of paths
      l48_k2: configs/mnist/l48_k2.yaml
    estimators:                        # config files, or registry name + hyperparameters (label: the
      - configs/estimators/st.yaml     # file's stem or the name)
      - {name: redge_cov, init_args: {n_steps: 3, t_1: 0.5}, label: redge_cov_half}
    args: []                           # extra CLI arguments for every fit and test ({seed}: the run's seed,
                                       # e.g. --data.init_args.data_seed={seed})
    quick: {steps: 50, args: [...]}    # what --quick uses instead (optional; defaults below)
    metrics:                           # the columns (default: the VAE's train/loss, exact NELBOs, log p(x))
      - {tag: test/nelbo, header: test NELBO, lower: true}
    curves: [{tag: val/nelbo, title: val NELBO}]   # the figures (default: the VAE's)
    note: text under the title of results.md

Every run goes through the ``catvae`` command itself, in its own process (``catvae.cli.main`` with
``fit`` then ``test --ckpt_path last``), into ``<out>/runs/<setting>/<label>/seed<seed>/<estimator>/version_N``
— all runs under one TensorBoard root (``tensorboard --logdir <out>/runs``). A run is finished when its
``result.json`` exists (with the same arguments); re-running a spec skips finished runs and resumes
interrupted ones from their last checkpoint. ``<out>`` then holds ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds, best in bold; runtime table) and ``curves_*.png``.

Over several machines: ``--shard i/N`` runs the runs whose index in the spec's order is ``i`` mod ``N`` (and
writes no table); ``--collect DIR ...`` trains nothing and writes the table of ``--out`` from the finished runs
found in ``--out`` and the given folders (the shards' ``--out``). With a shared file system every shard can
use the same ``--out``, and a plain rerun of the spec there (or ``--collect`` with no folder) assembles it. A
SLURM job array::

    #SBATCH --array=0-3
    catvae compare configs/compare/table3.yaml --shard $SLURM_ARRAY_TASK_ID/4 --out results/table3
    # then, once all four are done:
    catvae compare configs/compare/table3.yaml --collect --out results/table3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from estimators.base import ConfigError

from . import batched
from .execute import collect, execute, gather, run_all, run_groups
from .report import plot_curves, write_csv, write_markdown
from .spec import Run, load_spec

__all__ = ["Run", "collect", "compare", "execute", "load_spec", "run_all", "write_csv",
           "write_markdown"]


def compare(args: argparse.Namespace) -> int:
    spec = Path(args.spec)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds}: expected integers separated by commas, e.g. --seeds 0,1,2") from None
    runs = load_spec(spec, quick=args.quick, steps=args.steps, seeds=seeds)
    if args.settings:
        chosen, known = args.settings.split(","), list(dict.fromkeys(r.setting for r in runs))
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise ConfigError(f"--settings {args.settings}: {spec} has no setting {', '.join(unknown)}; its settings: "
                              f"{', '.join(known)}")
        runs = [r for r in runs if r.setting in chosen]
    out = Path(args.out or f"results/{spec.stem}{'_quick' if args.quick else ''}")
    if args.group_size is not None and (args.group_size < 1 or not args.batched):
        raise ConfigError(f"--group_size {args.group_size}: needs --batched and a value >= 1")
    if args.progress_every < 0:
        raise ConfigError(f"--progress_every {args.progress_every}: expected seconds >= 0 (0: no progress lines)")
    if args.batched and args.parallel != 1:
        raise ConfigError("--batched trains one group at a time on every core (or the GPU): drop --parallel")
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the results folder {out} ({err.strerror or err}); pass a writable --out") \
            from None
    shard = _shard(args.shard) if args.shard else None
    if shard and args.collect is not None:
        raise ConfigError("--shard runs part of a sweep and --collect assembles one: use one or the other")
    mine = [r for j, r in enumerate(runs) if j % shard[1] == shard[0]] if shard else runs
    if args.dry_run and args.batched:
        groups = batched.plan_groups(mine, out, args.group_size)
        for g, group in enumerate(groups):
            print(f"group {g + 1}/{len(groups)} ({group[0].setting}, {len(group)} runs): "
                  + ", ".join(f"{r.label}/seed{r.seed}" for r in group))
        return 0
    if args.dry_run:
        for run in mine:
            print(f"catvae fit {' '.join(run.cli_args(out))} --trainer.max_steps {run.steps} --trainer.max_epochs -1")
        return 0
    if args.collect is not None:
        folders = [Path(f) for f in args.collect]
        absent = [str(f) for f in folders if not f.is_dir()]
        if absent:
            raise ConfigError(f"--collect: no such folder {', '.join(absent)}; pass the shards' --out folders")
        results, missing = gather(runs, [out, *folders])
        failures = [f"{m}: not finished in {out} or any --collect folder" for m in missing]
        stopped = None
    elif args.batched:
        results, failures, stopped = run_groups(mine, out, args.group_size, args.progress_every)
    else:
        results, failures, stopped = run_all(mine, out, args.parallel, args.progress_every)
    if shard:
        print(f"catvae compare: shard {shard[0]}/{shard[1]}: {len(results)}/{len(mine)} of its runs finished in {out}; "
              f"assemble the table with `catvae compare {spec} --out {out}` (one shared folder) or "
              f"`--collect <the other shards' folders>`")
        return _status(results, mine, failures, stopped)
    command = "catvae compare " + " ".join([str(spec)] + (["--quick"] if args.quick else []) +
                                           ([f"--steps {args.steps}"] if args.steps else []) +
                                           ([f"--seeds {args.seeds}"] if args.seeds else []) +
                                           ([f"--settings {args.settings}"] if args.settings else []))
    write_csv(results, out / "results.csv", runs[0].metrics)
    write_markdown(results, runs, out / "results.md", f"catvae compare: {spec.stem}", command)
    plots = plot_curves(results, runs, out) if results else []
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plots; "
          f"TensorBoard: tensorboard --logdir {out / 'runs'}")
    return _status(results, runs, failures, stopped)


def _status(results: list[dict], runs: list[Run], failures: list[str], stopped) -> int:
    if stopped is not None:
        print(f"catvae compare: stopped; {len(results)}/{len(runs)} runs finished, rerun the same command to "
              "resume the others", file=sys.stderr)
        return 128 + int(stopped)
    if failures:
        print(f"catvae compare: {len(failures)} run(s) failed or missing (logs in each run's log.txt):\n  "
              + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``i/N`` (``0 <= i < N``): this shard takes the runs whose index in the spec's order is ``i`` mod ``N``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. --shard 0/4 (i from 0 to N-1)") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N, e.g. --shard $SLURM_ARRAY_TASK_ID/4 with --array=0-3")
    return i, n


