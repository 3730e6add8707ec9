from .vae import CategoricalVAE

__all__ = ["CategoricalVAE"]
