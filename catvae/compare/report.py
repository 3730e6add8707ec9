"""What a sweep writes: ``results.csv``, ``results.md`` (paper-style tables) and the training-curve PNGs."""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from pathlib import Path

from .spec import Run

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


def write_csv(results: list[dict], path: Path, metrics=()) -> None:
    cols = ["estimator", "name", "params", "setting", "seed", "steps", *[m.column for m in metrics],
            "epoch_s", "ms_per_step", "steps_per_epoch", "wall_s", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results:
            row = {**r, "params": " ".join(f"{k}={v}" for k, v in r["params"].items())}
            w.writerow([row.get(c) if row.get(c) is not None else "" for c in cols])


def _ties(entries: list[tuple], lower: bool) -> tuple[float, list[float]]:
    """``(best mean, the other means within the spreads of it)`` of ``entries`` ``(mean, std, n)``: two means tie
    when they differ by no more than the sum of their stds (one seed: no spread, nothing ties)."""
    m0, s0, _ = (min if lower else max)(entries, key=lambda e: e[0])
    tied = [m for m, s, n in entries if m != m0 and n > 1 and abs(m - m0) <= (s or 0.0) + (s0 or 0.0)]
    return m0, tied


def _table(rows, cols, cells, lower):
    """Markdown table; cells[(row, col)] = (mean, std, n); per column (lower[col]: lower is better, or ``None``:
    not ranked) the best mean in bold when the others' means are further from it than the spreads, else the best
    and the means tied with it (:func:`_ties`) marked ``≈``."""
    best, tied = {}, {}
    for c, _ in cols:
        entries = [cells[(r, c)] for r in rows if cells.get((r, c), (None,))[0] is not None]
        if entries and lower[c] is not None:  # None: a column not ranked
            best[c], tied[c] = _ties(entries, lower[c])
    lines = ["| estimator | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        out = []
        for c, _ in cols:
            m, s, n = cells.get((r, c), (None, None, 0))
            if m is None:
                out.append("—")
                continue
            text = f"{fmt(m)} ± {fmt(s, decimals=_decimals(m))}" if n > 1 else fmt(m)
            if best.get(c) == m:
                text = f"{text} ≈" if tied[c] else f"**{text}**"
            elif m in tied.get(c, ()):
                text = f"{text} ≈"
            out.append(text)
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

    metrics = runs[0].metrics if runs else ()
    note = runs[0].note if runs else ""
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Budget: {steps} training steps per run; seeds {seeds}; "
             f"{len(results)}/{len(runs)} runs finished. Mean ± std over seeds; best per column in **bold** when the "
             "other means lie further from it than the two stds together, else the best and the means within that "
             "distance of it marked ≈ (a tie at this number of seeds).", "",
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


#: the share of training the lower row of a curves figure zooms on (the end, where the comparison is)
TAIL = 0.2
#: line styles cycled with the colours, so that overlapping curves stay apart in print and for colour-blind readers
STYLES = ("-", "--", "-.", ":")


def plot_curves(results: list[dict], runs: list[Run], out: Path) -> list[Path]:
    """One figure per curve of the spec: a column per setting; the top row the whole run, the bottom row the last
    :data:`TAIL` of the steps with its own y-range (the first evaluations would squeeze the final gap); mean ±
    std over seeds; one legend, outside the panels; the runs not finished named under the title."""
    # imported here: matplotlib adds 0.6-0.8 s to the start of every `catvae` command on this CPU
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    # the ten-colour palette itself, whatever the active style's cycle (ggplot's has seven: "C7" is "C0")
    palette = matplotlib.colormaps["tab10"]

    settings = list(dict.fromkeys(r.setting for r in runs))
    labels = list(dict.fromkeys(r.label for r in runs))
    done = {r["key"] for r in results if "key" in r}
    missing = [r.experiment for r in runs if r.key() not in done] if done else []
    written = []
    for curve in runs[0].curves if runs else ():
        tag, title = curve.tag, curve.title
        fig, axes = plt.subplots(2, len(settings), figsize=(max(7.0, 5 * len(settings)) + 2.2, 7.4), squeeze=False,
                                 gridspec_kw={"height_ratios": [3, 2]})
        handles = {}
        for col, s in enumerate(settings):
            full, tail = axes[0][col], axes[1][col]
            for k, label in enumerate(labels):
                curves = [dict(map(tuple, r["curves"].get(tag, []))) for r in results
                          if r["setting"] == s and r["estimator"] == label]
                curves = [c for c in curves if c]
                steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if not steps:
                    continue
                values = np.array([[c[t] for t in steps] for c in curves])
                mean, std = values.mean(0), values.std(0)
                style = {"linestyle": STYLES[k // 10 % len(STYLES)] if len(labels) > 10 else STYLES[k % len(STYLES)],
                         "color": palette(k % 10), "marker": "o" if len(steps) <= 30 else None, "markersize": 3}
                start = steps[-1] - TAIL * (steps[-1] - steps[0])
                keep = np.array(steps) >= start
                for ax, sel in ((full, slice(None)), (tail, keep)):
                    x = np.array(steps)[sel]
                    line, = ax.plot(x, mean[sel], label=label, **style)
                    ax.fill_between(x, (mean - std)[sel], (mean + std)[sel], color=line.get_color(), alpha=0.15)
                handles.setdefault(label, line)
            full.set_title(s)
            tail.set_title(f"{s}: last {TAIL:.0%} of the steps", fontsize=9)
            for ax in (full, tail):
                ax.set_xlabel("step")
                ax.set_ylabel(textwrap.fill(title, 36), fontsize=9)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
                if curve.log:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(0.985, 0.5), fontsize=8,
                       frameon=False)
        n_seeds = len({r.seed for r in runs})
        spread = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
        head = f"{title}: {spread}"
        if missing:
            head += f" — {len(runs) - len(missing)}/{len(runs)} runs finished; not shown: {', '.join(missing)}"
        fig.suptitle(textwrap.fill(head, 110), fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.985, 1))
        path = out / f"curves_{_slug(tag)}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
