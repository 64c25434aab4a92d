"""Autoencoder variants as LightningModules; :class:`AE` is the base of all."""

from aelight.models.autoencoder import AE
from aelight.models.denoising import DenoisingAE
from aelight.models.sparse import SparseAE
from aelight.models.vae import VAE

__all__ = ["AE", "DenoisingAE", "SparseAE", "VAE"]
