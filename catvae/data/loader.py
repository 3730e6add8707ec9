"""Batches sliced from tensors that live on the training device: no workers, no per-item transforms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from estimators.constraints import integer, validate

__all__ = ["StackedBatches", "TensorBatches"]


class TensorBatches:
    """A resumable iterable of batches of rows of ``data`` (already on the training device).

    Each epoch draws a permutation from a generator seeded with ``(seed, epoch)``, so the order is a
    pure function of the epoch: identical across restarts and independent of the global RNG. Under
    DDP each rank takes every ``world_size``-th index of the permutation (its shard). ``transform``
    (``(batch, generator) -> batch``) runs on whole batches, e.g. dynamic binarization.

    It implements ``state_dict``/``load_state_dict``, which Lightning saves in checkpoints, so a run
    stopped mid-epoch resumes at the next unseen batch.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        validate({"batch_size": integer(1)}, {"batch_size": batch_size})
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.transform = transform
        n = len(data)
        self.shard_size = n // world_size if drop_last or shuffle else -(-(n - rank) // world_size)
        self._epoch, self._consumed = -1, 0
        self._restored: dict | None = None

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def _indices(self, epoch: int) -> Tensor:
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        shard = order[self.rank :: self.world_size][: self.shard_size]
        return shard.to(self.data.device)

    def __iter__(self):
        epoch = self.epoch_fn()
        start = 0
        if self._restored is not None and self._restored["epoch"] == epoch:
            start = self._restored["consumed"]
            if start >= len(self):
                start = 0
        self._restored = None
        self._epoch, self._consumed = epoch, start
        indices = self._indices(epoch)
        gen = None
        if self.transform is not None:
            gen = torch.Generator(device=self.data.device).manual_seed(self.seed * 7_919 + epoch)
        if gen is not None:  # the transform's noise for skipped batches is skipped as well
            for b in range(start):
                self.transform(self._rows(indices, b), gen)
        for b in range(start, len(self)):
            batch = self._rows(indices, b)
            if self.transform is not None:
                batch = self.transform(batch, gen)
            self._consumed = b + 1
            yield batch

    def _rows(self, indices: Tensor, b: int) -> Tensor:
        # index_select, not data[idx]: 4x faster for a row gather on CPU
        return self.data.index_select(0, indices[b * self.batch_size : (b + 1) * self.batch_size])

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict) -> None:
        self._restored = dict(state)


class StackedBatches:
    """Batches of several runs at once: ``[R, B, ...]``, run ``r``'s rows from its own loader (its own
    seed's order). ``state_dict`` holds every run's position, so a stopped group resumes each run at its
    next unseen batch."""

    def __init__(self, loaders: list[TensorBatches]) -> None:
        if len({len(loader) for loader in loaders}) != 1:
            raise ValueError("the runs of a stacked batch need loaders of the same length")
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield torch.stack(batches)

    def state_dict(self) -> dict:
        return {"runs": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        for loader, run in zip(self.loaders, state["runs"]):
            loader.load_state_dict(run)
