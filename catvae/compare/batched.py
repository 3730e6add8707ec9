r"""``catvae compare SPEC --batched``: the runs of one setting trained together as one stacked model.

The runs of a setting (same architecture and data; any estimators and seeds) are split into groups
(:func:`plan`), and each group is trained in one process by one Lightning ``Trainer`` as a
:class:`~catvae.models.stacked.StackedVAE`. Each run is built exactly as ``catvae fit`` builds it — the same
config files and arguments, its model initialized under its seed, its data module with its own shuffling —
and keeps its own data order, noise and estimator inside the group.

What a group leaves behind is what the unbatched sweep leaves: every run has its own
``runs/<setting>/<label>/seed<seed>/<estimator>/version_N`` with TensorBoard scalars under the single-run tags,
``hparams.yaml`` and ``checkpoints/last.ckpt``, an ordinary ``CategoricalVAE`` checkpoint (``catvae test`` and
``catvae fit --ckpt_path`` take it; entry for entry what ``catvae fit`` of the run alone writes at that step,
:func:`split_checkpoint`), and ``test/nelbo`` and
``test/log_likelihood`` as ``catvae test --ckpt_path last`` gives them for the run alone (same draws), computed
for the whole group in one pass (on a GPU, 105 separate ``catvae test`` processes would cost minutes of
start-up). The group itself checkpoints into
``groups/<setting>/<group>/checkpoints/last.ckpt`` (every ``--checkpoint_every_n_steps`` steps, at the end — as
an epoch's end when the budget ends one —, and on SIGINT/SIGTERM; not every epoch as a single run does, since a
group checkpoint holds every run), and a
rerun of the sweep resumes it exactly; the runs' own checkpoints are written from it when the group stops
(finished, or interrupted: then they are loadable, but the group is what resumes).

A run that diverges (its logits or loss non-finite on CPU, its parameters at a checkpoint on a GPU) is left out
from then on — no checkpoint of its own, recorded in ``group.json`` and reported by the sweep as failed — and
the group's other runs train on, unchanged; a group stops only when all its runs diverged.

A batched run has no ``best-*.ckpt`` (the best checkpoint by validation NELBO of ``catvae fit``): keeping it
would write a full checkpoint of most runs at most validations, more I/O than the whole training at
Table 3's sizes. Evaluate ``last`` (as ``compare`` does), or train the run alone to have its best.

Group size: all the runs of a setting by default, fewer when they would not fit (:func:`group_size`:
``--group_size`` caps it by hand).
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import CheckpointOnInterrupt, CommitCheckpoints, DurableCheckpointIO, HParamsSummary, RunCheckpoint, Throughput
from callbacks.compat import last_saved_step
from estimators.base import ConfigError

from .. import runner
from ..benchmarks.vae import CategoricalVAE
from ..benchmarks.vae.model import linear_layout
from ..benchmarks.vae.stacked import StackedVAE, run_slice, upgrade_group_checkpoint
from ..core import EstimatorTask
from ..data.loader import StackedBatches
from ..loggers import drop_held_logs
from ..metrics import step_means
from ..runs import LAST, claim_version, load_checkpoint, record_versions
from .child import tie_to_parent
from .spec import Run

__all__ = ["GroupData", "Template", "build_template", "diverged_runs", "fit_group", "group_size", "plan",
           "plan_groups", "split_checkpoint"]

#: the callbacks a batched group replaces by its own per-run logging (any other configured callback is refused)
_REPLACED = (LearningRateMonitor, Throughput, HParamsSummary)


class _TemplateCLI(runner.CatVAECLI):
    """``catvae fit``'s parser and class instantiation (seed, model, data), without a trainer."""

    def instantiate_trainer(self, **kwargs):
        return None

    def callbacks(self) -> list:
        """The run's configured callbacks as ``catvae fit`` would take them (no progress bar when
        ``--trainer.enable_progress_bar false``)."""
        return self._configured_callbacks(self.config)


@dataclass
class Template:
    """One run as ``catvae fit`` would build it: its model (initial weights from its seed), data module,
    parsed CLI, noise state after building, and run directory root ``<runs_dir>/<experiment>/<estimator>``."""

    model: EstimatorTask
    datamodule: L.LightningDataModule
    cli: _TemplateCLI
    rng_state: dict
    root: Path


def build_template(args: list[str]) -> Template:
    """Parse ``args`` (``catvae fit``'s, without the subcommand) and build the run's classes as ``catvae fit``
    does: ``seed_everything`` first, then the data module and the model."""
    cli = runner.run_cli_class(_TemplateCLI, args)
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    cfg = cli.config
    root = Path(cfg.get("runs_dir") or "runs") / cfg.get("experiment_name") / cli.model.estimator.name
    return Template(cli.model, cli.datamodule, cli, state, root)


def _trainer_config(template: Template) -> dict:
    trainer = template.cli.config.get("trainer")
    return trainer.as_dict() if hasattr(trainer, "as_dict") else dict(trainer or {})


def check_group(templates: list[Template]) -> None:
    """:class:`ConfigError` unless the runs can share one stacked model, data and trainer."""
    first = templates[0]
    data = {k: v for k, v in first.datamodule.hparams.items() if k != "seed"}
    trainer0 = {k: v for k, v in _trainer_config(first).items() if k != "callbacks"}
    for j, t in enumerate(templates):
        if type(t.datamodule) is not type(first.datamodule) or \
                {k: v for k, v in t.datamodule.hparams.items() if k != "seed"} != data:
            raise ConfigError(f"the runs of a batched group must share their data (all but its seed): run {j} differs "
                              "from run 0; put them in different settings")
        trainer = {k: v for k, v in _trainer_config(t).items() if k != "callbacks"}
        if trainer != trainer0:
            key = next(k for k in trainer if trainer.get(k) != trainer0.get(k))
            raise ConfigError(f"the runs of a batched group must share their trainer options: run {j} has "
                              f"--trainer.{key} {trainer.get(key)!r}, run 0 {trainer0.get(key)!r}")
        extra = [type(c).__name__ for c in t.cli.callbacks()
                 if not isinstance(c, (ProgressBar, *_REPLACED))]
        if extra:
            raise ConfigError(f"--batched does not run the callbacks {', '.join(extra)} (run {j}); run that spec "
                              "without --batched")
    trainer = trainer0
    refused = {"accumulate_grad_batches": 1, "gradient_clip_val": None, "num_nodes": 1}
    for key, value in refused.items():
        if trainer.get(key, value) != value:
            raise ConfigError(f"--batched does not support --trainer.{key} {trainer[key]!r} (it would couple the "
                              "runs of a group); run without --batched")
    if trainer.get("precision") not in (None, "32", "32-true", 32):
        raise ConfigError(f"--batched trains in float32; drop --trainer.precision {trainer['precision']}")
    if trainer.get("devices") not in ("auto", 1, "1", None) or trainer.get("strategy") not in ("auto", None):
        raise ConfigError("--batched trains a group on one device (one process): drop --trainer.devices/strategy, "
                          "and spread groups over machines with --shard")


class GroupData(L.LightningDataModule):
    """The runs' data modules as one: training batches ``[R, B, ...]`` (each run its own order, from its own
    loader), validation on the first run's loader (the runs share their data, and evaluation is not shuffled).
    The data is loaded once and shared by all runs."""

    def __init__(self, datamodules: list[L.LightningDataModule]) -> None:
        super().__init__()
        self.datamodules = datamodules

    def prepare_data(self) -> None:
        self.datamodules[0].prepare_data()

    def setup(self, stage: str) -> None:
        first = self.datamodules[0]
        for dm in self.datamodules:
            dm.trainer = self.trainer
            if dm is not first:
                for name in ("train_x", "val_x", "test_x"):
                    setattr(dm, name, getattr(first, name))
            dm.setup(stage)

    def train_dataloader(self) -> StackedBatches:
        return StackedBatches([dm.train_dataloader() for dm in self.datamodules])

    def val_dataloader(self):
        return self.datamodules[0].val_dataloader()

    def test_dataloader(self):
        return self.datamodules[0].test_dataloader()


#: on CPU, a group's latent-sized tensors (``[R, B, L, K]`` float32) are kept under this size: a CPU step is
#: compute-bound, so a group only saves processes, and past the caches it loses (``catvae bench sweep`` at
#: L = 32, K = 64 on docs/performance.md's CPU: 21 runs at 0.83-0.87x of separate runs, 7-14 at 0.92-1.02x)
CPU_GROUP_LATENT_BYTES = 16 * 2**20


def run_bytes(model: EstimatorTask, batch_size: int) -> int:
    """A generous estimate of one run's memory in a group: parameters, gradients and Adam's two moments (4 ×
    the parameters), and the step's activations (each layer's input and output, the logits and samples, a
    dozen latent-sized tensors of the estimator), all float32, times 2 for allocator slack."""
    params = sum(p.numel() for p in model.parameters())
    widths = [layer.in_features + layer.out_features for layer in model.modules() if isinstance(layer, torch.nn.Linear)]
    latent = model.latent_dim * model.n_categories
    activations = batch_size * (sum(widths) + 16 * latent * max(1, getattr(model.estimator, "n_steps", 1)))
    return 2 * 4 * (4 * params + 3 * activations)


def available_bytes(device: str) -> int:
    """Free memory for groups: half the free memory of the GPU, or half of the machine's available memory."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] // 2
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def group_size(template: Template, limit: int | None = None) -> int:
    """Runs per group: as many as :func:`run_bytes` says fit in :func:`available_bytes` of the device the runs
    will train on (on CPU also :data:`CPU_GROUP_LATENT_BYTES`), at most ``limit`` (``--group_size``), at least
    1. :class:`ConfigError` for a task that does not stack (only the VAE does)."""
    if not isinstance(template.model, CategoricalVAE):
        raise ConfigError(f"--batched stacks CategoricalVAE runs; this spec trains {type(template.model).__name__}: "
                          "run it without --batched (its runs are single-parameter benchmarks, fast alone)")
    accelerator = _trainer_config(template).get("accelerator") or "auto"
    device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    batch = getattr(template.datamodule, "batch_size", 1)
    fits = max(1, available_bytes(device) // run_bytes(template.model, batch))
    if device == "cpu":  # where a group gains nothing, keep its latent-sized tensors within the caches
        latent = batch * template.model.latent_dim * template.model.n_categories * 4
        fits = min(fits, max(1, CPU_GROUP_LATENT_BYTES // latent))
    return max(1, min(fits, limit)) if limit else fits


def plan(runs: list[Run], size: int | dict[str, int]) -> list[list[Run]]:
    """The groups: each setting's runs in spec order, cut into chunks of ``size`` (per setting when a dict)."""
    by_setting: dict[str, list[Run]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    groups = []
    for setting, members in by_setting.items():
        n = size[setting] if isinstance(size, dict) else size
        groups += [members[i : i + n] for i in range(0, len(members), n)]
    return groups


def plan_groups(runs: list[Run], out: Path, limit: int | None = None) -> list[list[Run]]:
    """The groups of ``runs`` (:func:`plan`) with each setting's size from :func:`group_size` (its first run built
    as ``catvae fit`` would build it)."""
    sizes: dict[str, int] = {}
    for setting in dict.fromkeys(run.setting for run in runs):
        templates = [build_template(run.train_args(out)) for run in _representatives([r for r in runs if r.setting == setting])]
        sizes[setting] = group_size(templates[0], limit)
        check_group(templates)
    drop_held_logs()  # "Seed set to 0" of each template: the groups print theirs in their own log.txt
    return plan(runs, sizes)


def _representatives(runs: list[Run]) -> list[Run]:
    """The runs of one setting whose options :func:`check_group` checks before anything runs: the first run of
    every estimator label (its config and the spec's arguments) and a second seed of the first label (what a
    seed changes: per-seed data or options). The other runs differ from these only in seed and label."""
    chosen = {}
    for run in runs:
        chosen.setdefault(run.label, run)
    first = runs[0]
    other_seed = next((r for r in runs if r.label == first.label and r.seed != first.seed), None)
    return [*chosen.values(), *([other_seed] if other_seed else [])]


def group_key(runs: list[Run], legacy: bool = False) -> str:
    keys = [r.legacy_key() if legacy else r.key() for r in runs]
    return hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:12]


def group_folder(runs: list[Run], out: Path) -> Path:
    """The group's folder: named by its runs' keys, or by their keys of an older catvae (:meth:`Run.legacy_key`)
    when only such a folder exists (a group started before the key changed resumes there)."""
    base = out / "groups" / runs[0].setting
    name = f"{runs[0].label}-seed{runs[0].seed}-x{len(runs)}-"
    folder = base / (name + group_key(runs))
    legacy = base / (name + group_key(runs, legacy=True))
    return legacy if not folder.exists() and legacy.exists() else folder


def payload(runs: list[Run], out: Path) -> str:
    """What the group's process needs (:func:`group_main`)."""
    folder = group_folder(runs, out)
    return json.dumps({"folder": str(folder), "key": folder.name.rpartition("-")[2],
                       "fit": [r.train_args(out) for r in runs]})


# -- in the group's process ---------------------------------------------------------------------------
def fit_group(fit: list[list[str]], folder: Path, key: str, callbacks: list | None = None, test: bool = True) -> None:
    """Train the group (resuming its ``last.ckpt`` when ``folder`` holds one of the same ``key``), test it
    (``test``: every run's ``test/`` metrics, as ``catvae test --ckpt_path last`` gives them for the run alone, in
    one batched pass), then write every run's own checkpoint from the group's (also when stopped). ``fit``: each
    run's ``catvae fit`` arguments; ``callbacks``: more Lightning callbacks for the group's trainer (the tests
    inject faults)."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "group.json"
    recorded = json.loads(marker.read_text()) if marker.is_file() else {}
    if recorded.get("key") != key:
        recorded = {}
    templates = [build_template(args) for args in fit]
    check_group(templates)
    ckpt = folder / "checkpoints" / LAST
    resume = bool(recorded) and ckpt.is_file()
    versions = recorded.get("versions")
    if not versions or len(versions) != len(templates):
        versions = [claim_version(t.root)[0] for t in templates]
        marker.write_text(json.dumps({"key": key, "versions": versions}))
    loggers = [TensorBoardLogger(save_dir=str(t.root.parent.parent), name=f"{t.root.parent.name}/{t.root.name}",
                                 version=v, default_hp_metric=False) for t, v in zip(templates, versions)]
    for t, logger, v in zip(templates, loggers, versions):
        logger.log_hyperparams(t.model.hparams_initial)
        record_versions(t.root / f"version_{v}", f"fit (batched group {folder.name}{', resumed' if resume else ''})",
                        t.datamodule)

    def write(r: int, metrics: dict, step: int) -> None:
        loggers[r].log_metrics(metrics, step)

    module = StackedVAE([t.model for t in templates], [t.rng_state for t in templates], writer=write)
    data = GroupData([t.datamodule for t in templates])
    every = templates[0].cli.config.get("checkpoint_every_n_steps")
    bars = [c for c in templates[0].cli.callbacks() if isinstance(c, ProgressBar)]
    first = templates[0].datamodule
    first.setup("fit")
    per_epoch = max(1, len(first.train_dataloader()))
    # a group checkpoint holds every run: every --checkpoint_every_n_steps steps (epoch ends included), not every
    # epoch as a single run's (Table 3 on a GPU: 35 runs at L=32, K=64 are ~0.9 GB a checkpoint)
    last = RunCheckpoint.last(every, str(folder / "checkpoints"), resume, every_n_epochs=max(1, every // per_epoch))
    callbacks = [*bars, *(callbacks or []), *last, CheckpointOnInterrupt(), CommitCheckpoints(loggers)]
    templates[0].cli.save_config_callback = None  # each run's config is its own; the group has none to save
    trainer = LightningCLI.instantiate_trainer(templates[0].cli, logger=False, callbacks=callbacks,
                                               default_root_dir=str(folder), enable_model_summary=False,
                                               **templates[0].cli.trainer_overrides())
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if resume else None, weights_only=True)
        if trainer.global_step > max(last_saved_step(c) for c in last):
            trainer.save_checkpoint(ckpt)  # a stop the callbacks did not save (the budget's end they do), e.g. max_time
        if test:
            trainer.test(module, datamodule=data, verbose=False, weights_only=True)
    finally:
        for logger in loggers:
            logger.finalize("success")
        if ckpt.is_file():
            group = load_checkpoint(ckpt)
            write_run_checkpoints(group, templates, versions)
            diverged = group["state_dict"].get("diverged_at")
            steps = {r: int(s) for r, s in enumerate(diverged.tolist())} if diverged is not None else {}
            marker.write_text(json.dumps({"key": key, "versions": versions,
                                          "diverged": {r: s for r, s in steps.items() if s >= 0}}))


#: the entries of a group checkpoint that belong to the group alone (a run's checkpoint replaces or drops them)
_GROUP_ONLY = ("state_dict", "optimizer_states", "callbacks", "hyper_parameters", "datamodule_hyper_parameters",
               "catvae_streams", "catvae_task")


def split_checkpoint(group: dict, r: int, template: Template) -> dict:
    """Run ``r``'s own ``CategoricalVAE`` checkpoint from a group checkpoint: entry for entry what ``catvae fit`` of
    the run alone writes at the same step (``tests/test_batched.py`` compares them), but for the callbacks' states,
    which belong to the group's folder.

    The group checkpoint is Lightning's (``trainer.save_checkpoint`` of the group's trainer), and every entry that
    is not per run is carried over from it as Lightning wrote it (format version, epoch, global step, loop
    progress, learning-rate schedulers, the optimizer's parameter groups). What is per run is cut from the group's
    stacked tensors into the run's own model (``template.model``: its parameters in its own layout, its epoch
    means, :meth:`~catvae.metrics.StepMean.load_run`), which then gives its state dict, hyperparameters and its
    ``catvae_*`` entries (:meth:`~catvae.core.EstimatorTask.checkpoint_entries`, with the run's noise stream); Adam's
    moments and the run's position in its data (its part of the stacked loader's state) are sliced here."""
    model, data = template.model, template.datamodule
    names = [n for n, _ in model.named_parameters()]
    upgrade_group_checkpoint(group, names)
    params = group["state_dict"]
    transposed = [linear_layout(n, params[n]) for n in names]
    model.load_state_dict({**model.state_dict(), **{n: run_slice(params[n], r, t) for n, t in zip(names, transposed)}})
    updates = group["catvae_task"].get("metric_updates") or {}
    for name, metric in step_means(model).items():
        if f"{name}.weight" in params:
            metric.load_run({k: params[f"{name}.{k}"] for k in ("mean_value", "weight")}, r, updates.get(name))
    optimizer = group["optimizer_states"][0]
    state = {i: {k: (run_slice(v, r, transposed[i]) if k != "step" else v.clone()) for k, v in s.items()}
             for i, s in optimizer["state"].items()}
    loops = copy.deepcopy(group["loops"])
    loader = loops["fit_loop"].get("state_dict", {}).get("combined_loader")
    if loader:
        loops["fit_loop"]["state_dict"]["combined_loader"] = [loader[0]["runs"][r]]
    return {
        **{k: v for k, v in group.items() if k not in _GROUP_ONLY},
        "state_dict": model.state_dict(), "loops": loops, "callbacks": {},
        "optimizer_states": [{**optimizer, "state": state, "param_groups": copy.deepcopy(optimizer["param_groups"])}],
        # the arguments as Lightning's dump_checkpoint writes them: the data module's from save_hyperparameters(),
        # the task's last saved as a dict (EstimatorTask.record_estimator), for which Lightning records no name
        model.CHECKPOINT_HYPER_PARAMS_NAME: None, model.CHECKPOINT_HYPER_PARAMS_KEY: dict(model.hparams),
        data.CHECKPOINT_HYPER_PARAMS_NAME: "kwargs", data.CHECKPOINT_HYPER_PARAMS_KEY: dict(data.hparams),
        **model.checkpoint_entries(dict(group["catvae_streams"][r]), data),
    }


def write_run_checkpoints(group: dict, templates: list[Template], versions: list[int]) -> None:
    """Every run's ``version_N/checkpoints/last.ckpt`` from the group checkpoint, written as a single run writes
    its own (:class:`~callbacks.DurableCheckpointIO`: atomically, with its sha256 sidecar, the file it replaces kept
    as ``previous.ckpt``); none for a run that diverged."""
    diverged = group["state_dict"].get("diverged_at")
    writer = DurableCheckpointIO()
    for r, (t, v) in enumerate(zip(templates, versions)):
        if diverged is not None and int(diverged[r]) >= 0:
            continue  # its last good checkpoint, if a stop wrote one, stays
        writer.save_checkpoint(split_checkpoint(group, r, t), t.root / f"version_{v}" / "checkpoints" / LAST)


def diverged_runs(folder: Path) -> dict[int, int]:
    """``{run index: step}`` of the runs of the group in ``folder`` that diverged (left out, the others went on)."""
    marker = folder / "group.json"
    recorded = json.loads(marker.read_text()) if marker.is_file() else {}
    return {int(r): int(step) for r, step in (recorded.get("diverged") or {}).items()}


def group_main(text: str) -> int:
    """The group's process: fit and test the group (:func:`fit_group`). Exit status as ``catvae``'s."""
    if not tie_to_parent():
        return 128 + int(signal.SIGTERM)
    sys.argv = sys.argv[:1]
    job = json.loads(text)
    return runner.handle(fit_group, job["fit"], Path(job["folder"]), job["key"])


if __name__ == "__main__":  # pragma: no cover - the entry point is catvae.compare.__main__
    sys.exit(group_main(sys.argv[1]))
