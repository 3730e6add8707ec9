"""What every catvae task shares: an estimator argument, reproducible RNG, checkpoint checks."""

from __future__ import annotations

import contextlib
import inspect

import lightning as L
import torch

import estimators
from estimators import CategoricalEstimator

__all__ = ["EstimatorTask", "resolve_estimator"]


def resolve_estimator(estimator: CategoricalEstimator | str) -> CategoricalEstimator:
    """An estimator instance from an instance or a registry name (``"redge_cov"``)."""
    if isinstance(estimator, str):
        return estimators.build(estimator)
    if not isinstance(estimator, CategoricalEstimator):
        raise ValueError(
            f"estimator must be a registry name ({', '.join(estimators.available())}) or an "
            f"estimators.CategoricalEstimator, got {type(estimator).__name__}"
        )
    return estimator


class EstimatorTask(L.LightningModule):
    """Base LightningModule of every task: holds the gradient estimator (a constructor argument).

    * The estimator is a module attribute; the task never branches on its name.
    * Checkpoints carry the RNG state that drives sampling, so a resumed run draws the same noise
      as an uninterrupted one (exact resumption). Validation and test draw from a forked RNG with a
      fixed seed, so evaluating never perturbs the training noise and its metrics are reproducible.
    * Loading a checkpoint written for another task or latent shape fails with one clear line.
    """

    #: a short name of the setting, used for the run directory ``runs/<experiment>/<estimator>/``.
    experiment: str = "run"
    #: the validation metric that selects the ``best`` checkpoint (minimized); ``None``: keep the newest.
    monitor: str | None = "val/nelbo"
    #: the seed of the evaluation RNG (validation / test sampling).
    eval_seed: int = 1234

    def __init__(self, estimator: CategoricalEstimator | str) -> None:
        super().__init__()
        self.estimator = resolve_estimator(estimator)
        self._pending_rng: dict | None = None

    def configure_optimizers(self):
        """Adam with the task's ``lr`` hyperparameter (every benchmark of the paper uses Adam, Table 5)."""
        return self.adam()

    def adam(self, capturable: bool = False) -> torch.optim.Adam:
        """``Adam(lr)`` over all parameters, with PyTorch's fused kernel on CPU and CUDA (one pass over
        every parameter instead of a dozen ops per tensor: 4× faster than the default on CPU at the VAE's
        size). ``capturable=True`` (CUDA-graph capture) keeps the default multi-tensor kernel."""
        fused = not capturable and self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, capturable=capturable, fused=fused or None)

    def save_task_hyperparameters(self) -> None:
        """``save_hyperparameters`` of the calling ``__init__``, with the estimator recorded by name and
        hyperparameters (TensorBoard's hparams, ``hparams.yaml``) instead of as a module."""
        self.save_hyperparameters(ignore=["estimator"], frame=inspect.currentframe().f_back)
        self.hparams["estimator"] = {"name": self.estimator.name, **self.estimator.hparams()}

    # -- reproducibility --------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_rng(self, offset: int = 0):
        """Fork the global RNG (CPU, and this module's CUDA device) and seed it for evaluation."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.eval_seed + offset)
            yield

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["catvae_rng"] = rng
        checkpoint["catvae_task"] = {"class": type(self).__qualname__, "estimator": self.estimator.name}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        task = checkpoint.get("catvae_task")
        if task is not None and task["class"] != type(self).__qualname__:
            raise ValueError(
                f"checkpoint was written by {task['class']}, not {type(self).__qualname__}: "
                "pass the config the checkpoint was trained with"
            )
        self._pending_rng = checkpoint.get("catvae_rng")

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # resume: continue the training noise exactly
            torch.set_rng_state(self._pending_rng["torch"])
            if "cuda" in self._pending_rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._pending_rng["cuda"], self.device)
            self._pending_rng = None
        if self.trainer.world_size > 1:
            # every rank starts from the same seed (and a checkpoint holds rank 0's state): give each
            # rank its own noise stream, derived deterministically from the shared one
            base = int(torch.randint(0, 2**62, (1,)).item())
            torch.manual_seed(base + self.trainer.global_rank)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = self.state_dict()
        mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            k = mismatched[0]
            raise ValueError(
                f"checkpoint does not match the model: {k} has shape {tuple(state_dict[k].shape)} in the "
                f"checkpoint but {tuple(own[k].shape)} in the model; use the config it was trained with"
            )
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(
                "checkpoint does not match the model: "
                + (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
                + "; use the config it was trained with"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
