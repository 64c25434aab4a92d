"""The fast data path: a whole split held once as a tensor on the training device.

MNIST is 47 MB as uint8, so it fits on any device. Batches are cut from a per-epoch random
permutation made on that device and converted to float there, so a training step needs no
host-to-device copy and no Python per image. Under DDP every rank draws from the same
permutation (same seed and epoch) and takes a disjoint strided share, so each sample is used
exactly once per epoch and all ranks take the same number of steps.
"""

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from aelight.data.pixels import to_float_images


class DeviceBatches:
    """Iterable of ``(images, labels)`` batches, images float in [0, 1] of shape (B, 1, H, W)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        binarize: bool = False,
    ):
        if images.dtype != torch.uint8:
            raise TypeError("DeviceBatches holds images as uint8 (0..255)")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch_fn, self.rank, self.world_size = epoch_fn, rank, world_size
        self.binarize = binarize
        share = math.ceil(len(images) / world_size)
        self.num_batches = math.ceil(share / batch_size)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.num_batches

    def order(self) -> Tensor:
        """Sample indices of this epoch, for this rank."""
        n = len(self.images)
        if self.shuffle:
            # Seeded by epoch, not by a counter of calls, so a run resumed at an epoch boundary
            # sees the same order as an uninterrupted one.
            g = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch_fn())
            order = torch.randperm(n, device=self.device, generator=g)
        else:
            order = torch.arange(n, device=self.device)
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        share = self.order()
        chunks = share.split(self.batch_size)
        if len(chunks) < self.num_batches:  # this rank's share is one sample short at a batch boundary
            chunks = share.tensor_split(self.num_batches)
        for idx in chunks:
            x = to_float_images(self.images.index_select(0, idx))
            if self.binarize:  # dynamic binarisation: a fresh Bernoulli draw each time an image is used
                x = torch.bernoulli(x)
            yield x, self.labels.index_select(0, idx)
