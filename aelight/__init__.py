"""aelight: autoencoder experiments with PyTorch Lightning."""

from aelight.data import MNISTDataModule
from aelight.models import AE, VAE, DenoisingAE, SparseAE

__all__ = ["AE", "DenoisingAE", "SparseAE", "VAE", "MNISTDataModule"]
__version__ = "0.1.0"
