"""aelight: autoencoder experiments with PyTorch Lightning.

The models and the data module are imported when first used (``from aelight import AE``), so
importing a light part of aelight (its command table, the sweep) does not import Lightning."""

import importlib

__all__ = [
    "AE",
    "ContractiveAE",
    "DenoisingAE",
    "SparseAE",
    "VAE",
    "HierarchicalVAE",
    "WTAAE",
    "UMAPAE",
    "MNISTDataModule",
    "ImageFolderDataModule",
]
__version__ = "0.1.0"

_HOMES = {name: "aelight.models" for name in __all__} | dict.fromkeys(
    ("MNISTDataModule", "ImageFolderDataModule"), "aelight.data"
)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'aelight' has no attribute {name!r}")
