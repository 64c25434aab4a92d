"""What every aelight data module serves, whatever it reads: splits of uint8 images held once in
memory, batches of float pixels in [0, 1] of shape (B, C, H, W) with their labels, on the
device-resident fast path (``DeviceBatches``) or through a standard DataLoader.

A data module says what its images are (``image_shape``, ``class_names``) so that the CLI can link
the shape to the networks, and an application or export can read it back from a run."""

from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from aelight.data.device_batches import DeviceBatches
from aelight.data.pixels import to_float_images
from aelight.errors import ConfigError

Split = Literal["train", "val", "test"]


class ResidentImages(Dataset):
    """A split's uint8 images (N, C, H, W) served one at a time as float (C, H, W) with its label:
    the standard DataLoader path over images decoded once."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return to_float_images(self.images[i : i + 1])[0], self.labels[i]


def check_loader_settings(batch_size: int, eval_batch_size: int, steps_per_batch: int, num_workers: int) -> None:
    for name, value in (
        ("batch_size", batch_size),
        ("eval_batch_size", eval_batch_size),
        ("steps_per_batch", steps_per_batch),
    ):
        if value < 1:
            raise ConfigError(f"data.{name} must be at least 1, got {value}")
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be 0 or more, got {num_workers}")


class ImageDataModule(L.LightningDataModule):
    """The loaders, the mean image and the fixed preview images, from ``split_tensors``; a
    subclass reads its files in ``setup`` and says what they are."""

    batch_size: int
    eval_batch_size: int
    steps_per_batch: int
    shuffle_seed: int
    device_resident: bool
    num_workers: int
    pin_memory: bool
    predict_split: Split
    binarize: bool = False

    def __init__(self):
        super().__init__()
        self._resident: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}  # (split, device): its tensors there

    # --- what a subclass provides --------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images served: linked to the networks by the CLI."""
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        """The names of the labels, label i named ``class_names[i]``."""
        raise NotImplementedError

    def split_tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        """The split's images (uint8, N x H x W for one channel, or N x C x H x W) and labels."""
        raise NotImplementedError

    def split_dataset(self, split: Split) -> Dataset:
        """The split as a map-style dataset of (float image, label), for the DataLoader path."""
        return ResidentImages(*self.split_tensors(split))

    # --- shared --------------------------------------------------------------------------------
    def mean_image(self, split: Split = "train") -> Tensor:
        """Mean of a split's images, in [0, 1], shape (C, H, W)."""
        images = self.split_tensors(split)[0]
        mean = images.sum(0, dtype=torch.float64) / (255.0 * len(images))
        return mean.float().reshape(self.image_shape)

    def fixed_images(self, split: Split = "val", n: int = 16) -> Tensor:
        """The first ``n`` images of a split, float in [0, 1], shape (n, C, H, W): for image grids."""
        return to_float_images(self.split_tensors(split)[0][:n])

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _loader(self, split: Split, shuffle: bool):
        batch_size = self.eval_batch_size
        if split == "train":  # an engine taking several optimizer steps per Lightning batch gets them at once
            batch_size = self.batch_size * self.steps_per_batch
        if not self.device_resident:
            return DataLoader(
                self.split_dataset(split),
                batch_size=batch_size,
                shuffle=shuffle,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        device = self._device()
        key = (split, str(device))
        if key not in self._resident:
            images, labels = self.split_tensors(split)
            self._resident[key] = (images.to(device), labels.to(device))
        trainer = self.trainer
        return DeviceBatches(
            *self._resident[key],
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.shuffle_seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            binarize=self.binarize and split == "train",
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def predict_dataloader(self):
        return self._loader(self.predict_split, shuffle=False)
