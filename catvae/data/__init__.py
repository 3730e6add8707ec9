from .loader import TensorBatches
from .mnist import MNISTDataModule

__all__ = ["MNISTDataModule", "TensorBatches"]
