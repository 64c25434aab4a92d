"""aelight: autoencoder experiments with PyTorch Lightning."""

from aelight.data import MNISTDataModule
from aelight.models import AE, UMAPAE, VAE, WTAAE, DenoisingAE, SparseAE

__all__ = ["AE", "DenoisingAE", "SparseAE", "VAE", "WTAAE", "UMAPAE", "MNISTDataModule"]
__version__ = "0.1.0"
