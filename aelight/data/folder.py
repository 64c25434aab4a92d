"""A folder of your own images as a LightningDataModule, served like MNIST.

Layouts it understands (``root`` is ``--data.root``):

- **anomaly** (MVTec AD's): ``train/good/`` holds the normal images; ``test/good/`` and
  ``test/<defect>/`` the images to score. Labels: 0 for good, 1... for the defect types (sorted).
  Validation is a seeded share of ``train/good``: normal images only.
- **split**: ``train/<class>/`` and ``test/<class>/``; validation a seeded share of ``train``.
- **classes**: ``<class>/`` folders, or the images themselves, directly under ``root``; seeded
  shares become validation and test.

Files are read with Pillow (``aelight.image_files``: the same reading as ``aelight score``), converted
to grayscale or RGB, resized and centre-cropped, and decoded once: the uint8 tensors are cached
(``cache_dir``), keyed by the files' names, sizes and modification times and the settings, so a
later run starts as fast as MNIST does; a changed file makes a new cache.
"""

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from aelight import safe_files
from aelight.data.base import ImageDataModule, Split, check_loader_settings
from aelight.data.folder_layout import NORMAL, FolderLayout, scan_layout  # noqa: F401 - NORMAL: the layout's, for its users
from aelight.errors import ConfigError, DataError
from aelight.image_files import ImageFileError, as_size, image_bands, open_image, read_pixels

CACHE_FORMAT = 1  # bump when what a cache file holds changes


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aelight", "image_folders")


class ImageFolderDataModule(ImageDataModule):
    """Your own images (PNG, JPEG, BMP, TIFF) in one of the layouts of ``aelight.data.folder``.

    Args:
        root: the folder of images.
        channels: 1 (grayscale) or 3 (RGB); default: those of the first training image. Images of
            the other kind are converted.
        resize: every image resized to this size (bilinear): an int for a square, or
            [height, width]. Without it, all images must have one size.
        center_crop: then the centre of this size is kept (an int or [height, width]).
        val_fraction: share of the training images held out for validation (seeded).
        test_fraction: share held out for testing when the folder has no ``test/``.
        split_seed: seed of those shares.
        cache_dir: where the decoded images are kept (default: ``$XDG_CACHE_HOME/aelight/image_folders``,
            ``~/.cache/...`` without it); ``null`` with ``cache: false``.
        cache: keep the decoded images for later runs.
        decode_workers: threads decoding the files the first time (default: the CPU count, up to 8).
        batch_size, eval_batch_size, shuffle_seed, device_resident, num_workers, pin_memory,
            predict_split, steps_per_batch: as for ``aelight.data.MNISTDataModule``.
    """

    def __init__(
        self,
        root: str,
        channels: Optional[Literal[1, 3]] = None,
        resize: Optional[Union[int, list[int]]] = None,
        center_crop: Optional[Union[int, list[int]]] = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        cache_dir: Optional[str] = None,
        cache: bool = True,
        decode_workers: Optional[int] = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        shuffle_seed: int = 0,
        device_resident: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        predict_split: Split = "test",
        steps_per_batch: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_loader_settings(batch_size, eval_batch_size, steps_per_batch, num_workers)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ConfigError(f"data.{name} must be between 0 and 1, got {value}")
        if channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.root = os.path.expanduser(root)
        self.channels_setting = channels
        self.resize, self.center_crop = as_size(resize, "data.resize"), as_size(center_crop, "data.center_crop")
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
        self.cache = cache
        self.decode_workers = decode_workers or min(8, os.cpu_count() or 1)
        self.batch_size, self.eval_batch_size, self.steps_per_batch = batch_size, eval_batch_size, steps_per_batch
        self.shuffle_seed, self.device_resident = shuffle_seed, device_resident
        self.num_workers, self.pin_memory, self.predict_split = num_workers, pin_memory, predict_split
        self._images: Optional[Tensor] = None  # every file of the layout, decoded: (N, C, H, W) uint8
        self._offsets: dict[str, int] = {}  # where each split starts in _images

    # --- what the files are ----------------------------------------------------------------------
    @cached_property
    def layout(self) -> FolderLayout:
        return scan_layout(self.root, self.val_fraction, self.test_fraction, self.split_seed)

    @cached_property
    def channels(self) -> int:
        if self.channels_setting is not None:
            return self.channels_setting
        return image_bands(open_image(self.layout.files["train"][0]))

    @cached_property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.center_crop or self.resize
        if size is None:  # the images' own size: the first training image's (all must share it)
            first = open_image(self.layout.files["train"][0])
            size = (first.height, first.width)
        return (self.channels, *size)

    @property
    def class_names(self) -> list[str]:
        return list(self.layout.class_names)

    def split_files(self, split: Split) -> list[str]:
        """The paths of a split's images, in the order ``split_tensors`` serves them."""
        return list(self._split_entry(split, self.layout.files))

    def _split_entry(self, split: str, table: dict):
        if split not in table:
            raise DataError(
                f"data.root {self.root}: no {split} images in its {self.layout.kind} layout "
                "(the anomaly layout needs a test/ folder to test or score)"
            )
        return table[split]

    # --- decoding, once ---------------------------------------------------------------------------
    def _all_files(self) -> list[str]:
        return [f for files in self.layout.files.values() for f in files]

    def cache_path(self) -> str:
        """The cache file of these files and settings: a hash of every file's name, size and
        modification time, and of the settings that change the decoded pixels."""
        digest = hashlib.sha256()
        settings = {"format": CACHE_FORMAT, "shape": self.image_shape, "resize": self.resize, "crop": self.center_crop}
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for path in self._all_files():
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return os.path.join(self.cache_dir, f"{digest.hexdigest()[:24]}.pt")

    def _decode(self, files: list[str]) -> Tensor:
        channels, height, width = self.image_shape

        def read(path: str) -> np.ndarray:
            pixels = read_pixels(path, channels, self.resize, self.center_crop)
            if pixels.shape[:2] != (height, width):
                first = self.layout.files["train"][0]
                raise ImageFileError(
                    f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but {first} is {width}x{height}: "
                    "images of mixed sizes; set --data.resize (and --data.center_crop) to bring them to one size"
                )
            return pixels

        with ThreadPoolExecutor(self.decode_workers) as pool:  # Pillow decodes outside the GIL
            arrays = list(pool.map(read, files))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def _load_or_decode(self) -> Tensor:
        files = self._all_files()
        path = self.cache_path() if self.cache else None
        if path and os.path.isfile(path):
            try:
                cached = torch.load(path, weights_only=True)
                if cached["files"] == files and tuple(cached["images"].shape[1:]) == self.image_shape:
                    return cached["images"]
            except Exception:  # noqa: BLE001 - a damaged cache file is decoded again and replaced
                pass
        images = self._decode(files)
        if path:
            try:
                os.makedirs(self.cache_dir, exist_ok=True)
                with safe_files.atomic_open(path, "wb", what="image cache") as f:
                    torch.save({"files": files, "images": images}, f)
            except (OSError, DataError) as err:  # no cache: the next run decodes again
                warnings.warn(f"the decoded images could not be cached in {self.cache_dir} ({err})", stacklevel=2)
        return images

    def prepare_data(self) -> None:
        # One process per node decodes and writes the cache, and keeps the images for its own setup;
        # the others then read the cache in setup.
        if self._images is None:
            self._images = self._load_or_decode()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._offsets:
            return
        if self._images is None:
            self._images = self._load_or_decode()
        start = 0
        for split, files in self.layout.files.items():
            self._offsets[split] = start
            start += len(files)

    def split_tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        files = self._split_entry(split, self.layout.files)
        if not self._offsets:
            self.setup()
        start = self._offsets[split]
        return self._images[start : start + len(files)], torch.tensor(self.layout.labels[split], dtype=torch.long)
