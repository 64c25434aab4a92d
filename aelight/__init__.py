"""aelight: autoencoder experiments with PyTorch Lightning."""

from aelight.data import MNISTDataModule
from aelight.models import AE, UMAPAE, VAE, WTAAE, ContractiveAE, DenoisingAE, SparseAE

__all__ = ["AE", "ContractiveAE", "DenoisingAE", "SparseAE", "VAE", "WTAAE", "UMAPAE", "MNISTDataModule"]
__version__ = "0.1.0"
