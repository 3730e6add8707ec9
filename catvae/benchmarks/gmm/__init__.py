"""GMM variational inference (§4.2, Table 1, Fig. 5): the task and its data module."""

from .data import GMMDataModule
from .task import GMMTask

__all__ = ["GMMDataModule", "GMMTask"]
