"""aelight: autoencoder experiments with PyTorch Lightning.

Train and evaluate from a script or notebook as from the command line (``aelight.run.api``):

    import aelight
    result = aelight.fit(config="configs/ae.yaml", overrides=["--trainer.max_epochs", "2"])
    tested = aelight.test(config="configs/ae.yaml", overrides=["--ckpt_path", "best"])

The models, the data modules and these calls are imported when first used (``from aelight import
AE``), so importing a light part of aelight (its command table, the sweep) does not import Lightning."""

import importlib

__all__ = [
    "fit",
    "validate",
    "test",
    "predict",
    "RunResult",
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

_HOMES = (
    {name: "aelight.models" for name in __all__}
    | dict.fromkeys(("MNISTDataModule", "ImageFolderDataModule"), "aelight.data")
    | dict.fromkeys(("fit", "validate", "test", "predict"), "aelight.run.api")
    | {"RunResult": "aelight.run_result"}
)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'aelight' has no attribute {name!r}")
