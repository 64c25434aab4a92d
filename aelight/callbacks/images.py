"""Reconstruction grids in TensorBoard, written by rank 0 at the end of each validation epoch."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger  # aelight's logger is one too
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid


class ReconstructionImages(L.Callback):
    """Logs ``images/reconstructions``: a fixed set of validation images in the top row and the
    model's rows below (see ``AE.preview``: the denoising AE shows noisy, output and clean rows).
    Models with a ``sample(n)`` method (the VAE) also get ``images/prior_samples``.
    """

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1):
        self.num_images, self.every_n_epochs = num_images, every_n_epochs
        self._images = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or trainer.datamodule is None or not hasattr(trainer.datamodule, "fixed_images"):
            return
        if self._images is None:
            self._images = trainer.datamodule.fixed_images("val", self.num_images)
        x = self._images.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            rows = [img.float().reshape(x.shape).clamp(0, 1) for _, img in pl_module.preview(x)]
            samples = pl_module.sample(self.num_images) if callable(getattr(pl_module, "sample", None)) else None
        pl_module.train(was_training)
        step = trainer.global_step
        for logger in loggers:
            grid = make_grid(torch.cat(rows), nrow=len(x), pad_value=1.0)
            logger.experiment.add_image("images/reconstructions", grid, step)
            if samples is not None:
                grid = make_grid(samples.float().reshape(-1, *x.shape[1:]).clamp(0, 1), nrow=8, pad_value=1.0)
                logger.experiment.add_image("images/prior_samples", grid, step)
