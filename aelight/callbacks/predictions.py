"""Writes what ``predict`` returns (codes, reconstructions, labels) to the run's folder."""

import os

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from aelight.safe_files import atomic_open


class PredictionWriter(BasePredictionWriter):
    """Saves ``predictions.pt`` (``predictions_rank{r}.pt`` per rank under DDP) in the run's log folder:
    a dict of tensors ``z`` (codes), ``recon`` (reconstructions in [0, 1]) and ``label``, in the split's
    order (rank r of a DDP run holds samples r, r + world_size, ...), loadable with
    ``torch.load(..., weights_only=True)``."""

    def __init__(self, filename: str = "predictions.pt"):
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        out = {k: torch.cat([p[k].detach().cpu() for p in predictions]) for k in predictions[0]}
        folder = trainer.log_dir or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        name = self.filename
        if trainer.world_size > 1:
            stem, ext = os.path.splitext(name)
            name = f"{stem}_rank{trainer.global_rank}{ext}"
        self.path = os.path.join(folder, name)
        with atomic_open(self.path, "wb", what="predictions") as f:  # a kill mid-write keeps the old file
            torch.save(out, f)
        print(f"predictions written to {self.path}")
