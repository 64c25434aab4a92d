"""Image grids in TensorBoard, written by rank 0 at the end of each validation epoch, at the
optimizer step: each row labelled with what it shows, digits drawn 3x (84 px) so they read without
zooming."""

import functools

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger  # aelight's logger is one too
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

LABEL_WIDTH = 300  # pixels of the row labels' column
FONT_SIZE = 36  # large: TensorBoard shrinks a grid to its card's width
GAP = 4  # white pixels between images and between rows


@functools.cache
def _font():
    return ImageFont.load_default(size=FONT_SIZE)


def labelled_grid(rows: list[tuple[str, Tensor]], scale: int = 3) -> np.ndarray:
    """Rows of images (each ``(name, (N, 1, H, W) in [0, 1])``) as one uint8 RGB picture (H, W, 3),
    each row's name written to its left."""
    font = _font()
    strips = []
    for name, images in rows:
        images = images.float().clamp(0, 1).cpu()
        if scale > 1:
            images = F.interpolate(images, scale_factor=scale, mode="nearest")
        n, _, h, w = images.shape
        strip = torch.ones(h, LABEL_WIDTH + n * (w + GAP))
        for i, image in enumerate(images):
            left = LABEL_WIDTH + i * (w + GAP)
            strip[:, left : left + w] = image[0]
        picture = Image.fromarray((strip.numpy() * 255).astype(np.uint8)).convert("RGB")
        ImageDraw.Draw(picture).text((8, h // 2), name, fill=(200, 30, 30), font=font, anchor="lm")
        strips.append(np.asarray(picture))
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, GAP), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    return np.concatenate(padded)[:-GAP]


def code_activity(codes: Tensor, scale: int = 6) -> np.ndarray:
    """Codes (N, D) as a picture: one row per image, one column per code unit, brightness the unit's
    activity relative to the largest in the batch (a sparse code shows few bright columns)."""
    codes = codes.float().flatten(1).abs().cpu()
    codes = codes / codes.max().clamp_min(1e-12)
    column = max(1, min(scale, 1200 // codes.shape[1]))
    picture = codes.repeat_interleave(scale, 0).repeat_interleave(column, 1)
    return (picture.numpy() * 255).astype(np.uint8)


class ReconstructionImages(L.Callback):
    """Logs, for a fixed set of validation images:

    - ``images/reconstructions``: the rows of ``AE.preview`` (input and reconstruction; the
      denoising AE's noisy, output and clean rows), each labelled;
    - ``images/code_activity``: their codes, one row per image, one column per code unit;
    - ``images/prior_samples``: two rows of decoded draws from the prior, for models with ``sample(n)``
      (the VAE).
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1):
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
            rows = [(name, img.float().reshape(x.shape)) for name, img in pl_module.preview(x)]
            codes = pl_module.encode(x)
            samples = pl_module.sample(2 * self.num_images) if callable(getattr(pl_module, "sample", None)) else None
        pl_module.train(was_training)
        pictures = {"images/reconstructions": labelled_grid(rows), "images/code_activity": code_activity(codes)}
        if samples is not None:
            samples = samples.float().reshape(-1, *x.shape[1:])
            pictures["images/prior_samples"] = labelled_grid(
                [("prior", samples[: self.num_images]), ("samples", samples[self.num_images :])]
            )
        for logger in loggers:
            for tag, picture in pictures.items():
                formats = "HWC" if picture.ndim == 3 else "HW"
                logger.experiment.add_image(tag, picture, trainer.global_step, dataformats=formats)
