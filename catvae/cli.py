"""The ``catvae`` command.

* ``catvae fit|validate|test|predict --config ...`` — LightningCLI: any :class:`~catvae.EstimatorTask`
  (``--model``) with any LightningDataModule (``--data``), the estimator chosen in the model's
  ``estimator`` argument by ``class_path`` (``estimators.ReDGECov``) or registry name (``redge_cov``).
* ``catvae bench ...`` — benchmarks that print tables.

Runs are written to ``<runs_dir>/<experiment>/<estimator>/version_N`` (TensorBoard events, the
resolved ``config.yaml``, ``checkpoints/``). ``--ckpt_path last`` (or ``best``) resumes/evaluates the
newest run of the same experiment and estimator, continuing in its directory.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

TOOLS = ("bench", "compare")

# Lightning's advertising and deprecation chatter that says nothing about the user's run.
_QUIET = [
    r".*litlogger.*", r".*litmodels.*", r".*isinstance\(treespec, LeafSpec\).*", r".*`weights_only` was not set.*",
    r".*is smaller than the logging interval.*", r".*does not have many workers.*",
    r".*callbacks used to create the checkpoint need to be provided.*",
]


def _tools_main(argv: list[str]) -> int:
    import argparse

    from . import bench, compare

    parser = argparse.ArgumentParser(prog="catvae", description="catvae tooling")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    compare.add_parser(sub)
    args = parser.parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


def fit_callbacks(monitor: str | None, checkpoint_every_n_steps: int = 1000) -> list:
    """The callbacks ``catvae fit`` adds to the user's: best/last checkpoints, learning rate, throughput,
    checkpoint on interrupt (``catvae bench train`` times the step with the same set)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from callbacks import CheckpointOnInterrupt, LastCheckpoint, Throughput

    return [
        ModelCheckpoint(monitor=monitor, mode="min", save_top_k=1 if monitor else 0, filename="best-{epoch}-{step}"),
        LastCheckpoint(checkpoint_every_n_steps),
        LearningRateMonitor(),
        Throughput(),
        CheckpointOnInterrupt(),
    ]


def _build_cli_class():
    import lightning as L
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import TensorBoardLogger

    from .core import EstimatorTask
    from .errors import UserError

    class CatVAECLI(LightningCLI):
        """LightningCLI with catvae's run layout, checkpointing and resume rules."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--experiment_name", type=str | None, default=None,
                                help="run directory <runs_dir>/<experiment_name>/<estimator>/; default: the task's")
            parser.add_argument("--runs_dir", type=str, default="runs", help="root of all run directories")
            parser.add_argument("--checkpoint_every_n_steps", type=int, default=1000,
                                help="also write last.ckpt every N training steps (it is always written each epoch)")

        def _run_root(self) -> Path:
            cfg = self.config[self.subcommand]
            experiment = cfg.get("experiment_name") or getattr(self.model, "experiment", "run")
            return Path(cfg.get("runs_dir") or "runs") / experiment / self.model.estimator.name

        def _resolve_ckpt(self, root: Path, which: str) -> tuple[Path, int]:
            versions = sorted(
                (int(m.group(1)), p) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
            )
            for version, path in reversed(versions):
                found = [path / "checkpoints" / "last.ckpt"] if which == "last" else \
                    sorted((path / "checkpoints").glob("best*.ckpt"), key=os.path.getmtime)
                found = [f for f in found if f.is_file()]
                if found:
                    return found[-1], version
            raise UserError(f"--ckpt_path {which}: no {which} checkpoint under {root}/version_*/checkpoints/; "
                            "train first, or pass the path of a .ckpt file")

        def _parse_ckpt_path(self) -> None:
            # Validate an explicit checkpoint early, and keep the given config as the source of truth
            # (Lightning would merge the checkpoint's hyperparameters into it; a mismatch is an error here).
            if self.config.get("subcommand"):
                ckpt = self.config[self.config.subcommand].get("ckpt_path")
                if ckpt and ckpt not in ("last", "best"):
                    _check_checkpoint(Path(ckpt))

        def instantiate_trainer(self, **kwargs):
            cfg = self.config[self.subcommand]
            root = self._run_root()
            version = None
            ckpt = cfg.get("ckpt_path")
            if ckpt in ("last", "best"):
                path, version = self._resolve_ckpt(root, ckpt)
                cfg["ckpt_path"] = str(path)
                self.config_init[self.subcommand]["ckpt_path"] = str(path)  # what the subcommand receives
                print(f"catvae: using {path}", file=sys.stderr)
            if cfg.get("trainer", {}).get("logger") in (None, True):
                logger = TensorBoardLogger(save_dir=str(root.parent.parent), name=f"{root.parent.name}/{root.name}",
                                           version=version, default_hp_metric=False)
                kwargs.setdefault("logger", logger)
            # config.yaml of a new run; a resumed or evaluated run keeps it and adds config.<subcommand>.yaml
            fresh_fit = self.subcommand == "fit" and version is None
            name = "config.yaml" if fresh_fit else f"config.{self.subcommand}.yaml"
            self.save_config_kwargs["config_filename"] = name
            self.save_config_kwargs["overwrite"] = not fresh_fit
            if self.subcommand == "fit":
                extra = fit_callbacks(getattr(self.model, "monitor", None), cfg.get("checkpoint_every_n_steps") or 1000)
                configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
                if not isinstance(configured, list):
                    configured = [configured]
                if cfg.get("trainer", {}).get("enable_progress_bar") is not False and not any(
                    isinstance(c, ProgressBar) for c in configured
                ):
                    # refreshing every step costs ~0.25 ms of Python and a host sync per step
                    extra.append(TQDMProgressBar(refresh_rate=10))
                kwargs["callbacks"] = configured + list(kwargs.get("callbacks") or []) + extra
            return super().instantiate_trainer(**kwargs)

    def _check_checkpoint(path: Path) -> None:
        import torch

        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist; pass an existing .ckpt file or --ckpt_path last")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}); "
                            "pass another --ckpt_path") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise UserError(f"checkpoint {path} has no state_dict (not a Lightning checkpoint); "
                            "pass another --ckpt_path")

    return CatVAECLI, EstimatorTask, L.LightningDataModule


DESCRIPTION = (
    "catvae: categorical VAEs and gradient estimators for discrete latents. Training subcommands below "
    "(LightningCLI); tools: `catvae bench {estimators,train}`, `catvae compare SPEC.yaml` (see their --help)."
)


def main(argv: list[str] | None = None) -> int:
    from_console = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    from .errors import UserError

    _quiet()
    try:
        if argv and argv[0] in TOOLS:
            return _tools_main(argv)
        cli_class, task, data = _build_cli_class()
        cli_class(
            task,
            data,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if from_console else argv,  # LightningCLI reads sys.argv itself from the console
            auto_configure_optimizers=False,
            parser_kwargs={"description": DESCRIPTION},
            save_config_kwargs={"overwrite": False},
            trainer_defaults={"log_every_n_steps": 50},
        )
    except (UserError, ValueError, FileNotFoundError) as err:
        if os.environ.get("CATVAE_DEBUG"):
            raise
        print(f"catvae: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; for jsonargparse's nested union errors, the innermost cause."""
    text = " ".join(str(err).split())
    if "Does not validate against any of the Union subtypes" in text:
        parts = [p.strip().lstrip("- ") for p in re.split(r" - |Errors: ", text)]
        causes = [p for p in parts if p and not p.startswith(("Does not validate", "Expected a", "Given value",
                                                               "Subtypes:"))]
        if causes:
            return causes[0]
    return text


def _quiet() -> None:
    import logging
    import warnings

    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(re.match(p, record.getMessage(), re.S) for p in _QUIET)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Drop())


if __name__ == "__main__":
    sys.exit(main())
