"""What a sweep writes: ``results.csv``, ``results.md`` (paper-style tables) and the training-curve PNGs."""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from pathlib import Path

from .spec import METRICS, Run

__all__ = ["plot_curves", "write_csv", "write_markdown"]

def _decimals(v, digits: int = 2) -> int:
    """``digits`` decimals, more below 1 in magnitude so that ``digits + 1`` significant digits show (0.00123)."""
    return digits if v == 0 or abs(v) >= 1 else max(digits, digits - math.floor(math.log10(abs(v))))


def fmt(v, digits=2, decimals: int | None = None) -> str:
    """A table cell: the value with ``decimals`` (default: :func:`_decimals`) decimals, or a dash for a missing
    or NaN value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{_decimals(v, digits) if decimals is None else decimals}f}"


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def write_csv(results: list[dict], path: Path, metrics=METRICS) -> None:
    cols = ["estimator", "name", "params", "setting", "seed", "steps", *[m.column for m in metrics],
            "epoch_s", "ms_per_step", "steps_per_epoch", "wall_s", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results:
            row = {**r, "params": " ".join(f"{k}={v}" for k, v in r["params"].items())}
            w.writerow([row.get(c) if row.get(c) is not None else "" for c in cols])


def _table(rows, cols, cells, lower):
    """Markdown table; cells[(row, col)] = (mean, std, n); bold the best mean per column (lower[col]: lower is
    better, or ``None``: not ranked)."""
    best = {}
    for c, _ in cols:
        means = [cells[(r, c)][0] for r in rows if cells.get((r, c), (None,))[0] is not None]
        if means and lower[c] is not None:  # None: a column not ranked
            best[c] = (min if lower[c] else max)(means)
    lines = ["| estimator | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        out = []
        for c, _ in cols:
            m, s, n = cells.get((r, c), (None, None, 0))
            if m is None:
                out.append("—")
                continue
            text = f"{fmt(m)} ± {fmt(s, decimals=_decimals(m))}" if n > 1 else fmt(m)
            out.append(f"**{text}**" if best.get(c) == m else text)
        lines.append(f"| {r} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def write_markdown(results: list[dict], runs: list[Run], path: Path, title: str, command: str) -> None:
    settings = list(dict.fromkeys(r.setting for r in runs))
    labels = list(dict.fromkeys(r.label for r in runs))
    params = {r.label: (r.name, _hparams(r.label, results, runs)) for r in runs}
    seeds = sorted({r.seed for r in runs})
    steps = runs[0].steps if runs else 0
    group = {}
    for r in results:
        group.setdefault((r["estimator"], r["setting"]), []).append(r)

    metrics = runs[0].metrics if runs else METRICS
    note = runs[0].note if runs else ""
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Budget: {steps} training steps per run; seeds {seeds}; "
             f"{len(results)}/{len(runs)} runs finished. Mean ± std over seeds; best per column in **bold**.", "",
             *([note, ""] if note else [])]
    done = {r["key"] for r in results if "key" in r}
    unfinished = [r.experiment for r in runs if r.key() not in done]
    if unfinished:
        lines += [f"**Not finished ({len(unfinished)}), left out of the table** (rerun the same command to resume "
                  f"them): {', '.join(unfinished)}", ""]
    cols, lower, cells = [], {}, {}
    for s in settings:
        for m in metrics:
            cols.append(((s, m.column), f"{s} {m.header}"))
            lower[(s, m.column)] = m.lower if m.rank else None
            for label in labels:
                cells[(label, (s, m.column))] = _stats([r.get(m.column) for r in group.get((label, s), [])])
    lines += ["## Results", "", _table(labels, cols, cells, lower), ""]
    rt_cols = [((s, "epoch_s"), f"{s} s/epoch") for s in settings] + [((s, "ms"), f"{s} ms/step") for s in settings]
    rt_cells = {}
    for s in settings:
        for label in labels:
            rs = group.get((label, s), [])
            rt_cells[(label, (s, "epoch_s"))] = _stats([r.get("epoch_s") for r in rs])
            rt_cells[(label, (s, "ms"))] = _stats([r.get("ms_per_step") for r in rs])
    lines += ["## Runtime (Table 4 shape)", "",
              "Wall time of a training epoch (including its validation pass and checkpoint) and per step; "
              "runs in parallel share the machine.", "",
              _table(labels, rt_cols, rt_cells, {c: True for c, _ in rt_cols}), "",
              "## Estimators", "", "| label | estimator | hyperparameters |", "|---|---|---|",
              *[f"| {k} | {n} | {p or '(defaults)'} |" for k, (n, p) in params.items()], "",
              "Training curves: " + ", ".join(f"`curves_{_slug(c.tag)}.png`" for c in (runs[0].curves if runs else ())) +
              "; all runs in TensorBoard: `tensorboard --logdir runs` in this folder.", ""]
    path.write_text("\n".join(lines))


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={float(f'{v:.4g}') if isinstance(v, float) else v}" for k, v in params.items())


def _hparams(label: str, results: list[dict], runs: list[Run]) -> str:
    """The estimator's hyperparameters as its finished runs recorded them (per setting where settings differ,
    e.g. a benchmark's Table 5 column), else the spec's overrides."""
    by_setting = {r["setting"]: _params_text(r["params"]) for r in results if r["estimator"] == label and "params" in r}
    if not by_setting:
        return next((r.params() for r in runs if r.label == label), "")
    if len(set(by_setting.values())) == 1:
        return next(iter(by_setting.values()))
    return "; ".join(f"{s}: {p}" for s, p in by_setting.items())


def _slug(tag: str) -> str:
    return tag.replace("/", "_")


def plot_curves(results: list[dict], runs: list[Run], out: Path) -> list[Path]:
    # imported here: matplotlib adds 0.6-0.8 s to the start of every `catvae` command on this CPU
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    settings = list(dict.fromkeys(r.setting for r in runs))
    labels = list(dict.fromkeys(r.label for r in runs))
    written = []
    for curve in runs[0].curves if runs else ():
        tag, title = curve.tag, curve.title
        fig, axes = plt.subplots(1, len(settings), figsize=(max(7.0, 5 * len(settings)), 4.2), squeeze=False)
        for ax, s in zip(axes[0], settings):
            for label in labels:
                curves = [dict(map(tuple, r["curves"].get(tag, []))) for r in results
                          if r["setting"] == s and r["estimator"] == label]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                steps = sorted(set.intersection(*(set(c) for c in curves)))
                if not steps:
                    continue
                values = np.array([[c[t] for t in steps] for c in curves])
                mean, std = values.mean(0), values.std(0)
                line, = ax.plot(steps, mean, label=label)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set_title(s)
            ax.set_xlabel("step")
            ax.set_ylabel(textwrap.fill(title, 40))
            if curve.log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        handles, names = axes[0][0].get_legend_handles_labels()
        if handles:
            axes[0][-1].legend(fontsize=8)
        n_seeds = len({r.seed for r in runs})
        spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
        fig.suptitle(textwrap.fill(f"{title}: {spread}", 90))
        fig.tight_layout()
        path = out / f"curves_{_slug(tag)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


