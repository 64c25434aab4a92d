"""Autoencoder variants as LightningModules; :class:`AE` is the base of all."""

from aelight.models.autoencoder import AE
from aelight.models.contractive import ContractiveAE
from aelight.models.denoising import DenoisingAE
from aelight.models.hierarchical_vae import HierarchicalVAE
from aelight.models.restoration import RestorationAE
from aelight.models.sparse import SparseAE
from aelight.models.umap import UMAPAE
from aelight.models.vae import VAE
from aelight.models.wta import WTAAE

__all__ = [
    "AE",
    "ContractiveAE",
    "DenoisingAE",
    "HierarchicalVAE",
    "RestorationAE",
    "SparseAE",
    "UMAPAE",
    "VAE",
    "WTAAE",
]
