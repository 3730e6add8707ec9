"""catvae: categorical VAEs and gradient-estimator comparisons with PyTorch Lightning."""
