r"""The step at which each GMM run first reaches its estimator's Table 1 value (issue 25 §3).

``python -m catvae.benchmarks.gmm.crossings RESULTS [--tag TAG] [--out FILE]`` reads the finished runs of a
``catvae compare`` folder (their ``result.json``: every run of a GMM spec keeps the curve of Table 1's statistic,
the mean of the objective over the last 100 steps, logged after each epoch of 100 steps) and prints, per setting
and estimator, the first logged step at which the curve is at or below the paper's Table 1 value of that
estimator (:data:`PAPER_TABLE1`), per seed, as a markdown table. An estimator the paper lacks is left out; a run
that never reaches the value shows ``—`` and its best value.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

#: Table 1 of the paper (§4.2): NELBO (mean ± std over 3 seeds of the mean of the last 100 training steps), per
#: registry name, on the scale of ``train/nelbo_window_mean_nc`` (docs/benchmarks.md compares them directly)
PAPER_TABLE1 = {"st": (4380.48, 126.67), "gumbel": (1296.11, 87.66), "reinmax": (1175.73, 78.78),
                "redge": (1716.58, 127.46), "redge_max": (1186.59, 58.98), "redge_cov": (1040.04, 97.89)}
TAG = "train/nelbo_window_mean_nc"


def first_crossing(curve: list, target: float) -> int | None:
    """The first step of ``curve`` (``[(step, value), ...]`` in step order) with value ``<= target``, else None."""
    return next((int(step) for step, value in curve if value <= target), None)


def crossings(results: Path, tag: str = TAG) -> list[dict]:
    """One row per finished run of ``results`` whose estimator has a Table 1 value: setting, estimator, seed, the
    paper's value, the crossing step (None: never) and the curve's lowest value."""
    rows = []
    for marker in sorted(results.glob("runs/*/*/seed*/result.json")):
        done = json.loads(marker.read_text())
        if done.get("name") not in PAPER_TABLE1:
            continue
        curve = done.get("curves", {}).get(tag)
        if not curve:
            raise SystemExit(f"crossings: {marker} has no curve {tag}: its spec must list it under curves:")
        target = PAPER_TABLE1[done["name"]][0]
        rows.append({"setting": done["setting"], "estimator": done["estimator"], "seed": done["seed"],
                     "paper": target, "step": first_crossing(curve, target), "lowest": min(v for _, v in curve),
                     "steps": done["steps"]})
    return rows


def markdown(rows: list[dict]) -> str:
    """Per setting and estimator: the paper's value, the crossing step of each seed and their median (``—``:
    not reached within the run; a median only when every seed reached it)."""
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| setting | estimator | paper | " + " | ".join(f"seed {s}" for s in seeds) + " | median |",
             "|---|---|---:|" + "---:|" * (len(seeds) + 1)]
    groups = {}
    for r in rows:
        groups.setdefault((r["setting"], r["estimator"]), {})[r["seed"]] = r
    for (setting, estimator), by_seed in groups.items():
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            cells.append("" if r is None else f"{r['step']:,}" if r["step"] is not None else f"— ({r['lowest']:.0f})")
        steps = [r["step"] for r in by_seed.values()]
        median = f"{statistics.median(steps):,.0f}" if steps and None not in steps else "—"
        paper = next(iter(by_seed.values()))["paper"]
        lines.append(f"| {setting} | {estimator} | {paper:.0f} | " + " | ".join(cells) + f" | {median} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catvae.benchmarks.gmm.crossings", description=__doc__.split(
        "\n\n")[0].replace("``", ""))
    parser.add_argument("results", type=Path, help="a catvae compare results folder of a GMM spec")
    parser.add_argument("--tag", default=TAG, help=f"the curve (default {TAG}, Table 1's statistic)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no such folder {args.results}: pass a catvae compare --out folder")
    rows = crossings(args.results, args.tag)
    if not rows:
        parser.error(f"{args.results} has no finished run of an estimator of Table 1")
    table = markdown(rows)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
