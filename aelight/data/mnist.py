"""MNIST-format datasets (MNIST, Fashion-MNIST, KMNIST) as a LightningDataModule.

Files are read with torchvision's dataset classes. Pixels are in [0, 1]: the common
``Normalize((0.5,), (0.5,))`` would put targets in [-1, 1], out of reach of a sigmoid decoder.
"""

import os
from typing import Literal, Optional, Union

import torch
from torch.utils.data import Subset
from torchvision import datasets, transforms

from aelight.data.base import ImageDataModule, Split, check_loader_settings
from aelight.data.idx import IDX_FILES, IMAGE_SIZE, NUM_CLASSES, check_raw_folder
from aelight.data.pixels import deskewed_uint8
from aelight.errors import ConfigError, DataError

DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}


class MNISTDataModule(ImageDataModule):
    """Seeded train/validation split of the official training set; the official test set.

    Args:
        data_dir: root folder; files are read from ``<data_dir>/<MNIST|FashionMNIST|KMNIST>/raw``.
        dataset: ``mnist``, ``fashion_mnist`` or ``kmnist`` (same format, same code path).
        download: fetch missing files (needs the internet).
        batch_size: training batch size.
        eval_batch_size: batch size of validation, test and predict.
        val_size: images of the training set held out for validation.
        split_seed: seed of the train/validation split.
        shuffle_seed: seed of the per-epoch order of the device-resident path.
        device_resident: hold each split on the training device and cut batches there (fast);
            ``false`` uses torchvision transforms and a standard DataLoader.
        num_workers, pin_memory: for the standard DataLoader path.
        predict_split: which split ``predict`` encodes.
        classes: keep only these labels in the train and validation splits (one-class training
            for anomaly detection); the test split stays whole.
        binarize: binarized MNIST: each training image is drawn anew as Bernoulli(pixel) every
            time it is used (dynamic binarisation); validation and test are binarized once with
            ``binarize_seed`` (fixed). Needs ``device_resident: true``.
        steps_per_batch: training batches served per Lightning batch, for a training engine that
            takes that many optimizer steps on each (``aelight.training.engine.TrainingEngine``; the CLI
            links this to ``engine.steps_per_batch``).
        deskew: every image deskewed once as it is read (``aelight.components.deskewed``: sheared
            so that its strokes stand upright, centred on its centre of mass), all splits alike: a
            fixed, label-free preprocessing. The applications apply it to the images they give a
            checkpoint trained with it.
    """

    def __init__(
        self,
        data_dir: str = "data/",
        dataset: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist",
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        shuffle_seed: int = 0,
        device_resident: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        predict_split: Split = "test",
        classes: Optional[list[int]] = None,
        binarize: bool = False,
        binarize_seed: int = 1234,
        steps_per_batch: int = 1,
        deskew: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
        check_loader_settings(batch_size, eval_batch_size, steps_per_batch, num_workers)
        if classes is not None and (not classes or any(c not in range(NUM_CLASSES) for c in classes)):
            raise ConfigError(
                f"data.classes must list digits from 0 to {NUM_CLASSES - 1} (the labels of {dataset}), got {classes}"
            )
        self.data_dir, self.dataset, self.download = os.path.expanduser(data_dir), dataset, download
        self.batch_size, self.eval_batch_size, self.steps_per_batch = batch_size, eval_batch_size, steps_per_batch
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.device_resident, self.num_workers, self.pin_memory = device_resident, num_workers, pin_memory
        self.predict_split = predict_split
        self.classes = classes
        if binarize and not device_resident:
            raise DataError("data.binarize needs data.device_resident: true (binarisation happens on the device)")
        self.binarize, self.binarize_seed = binarize, binarize_seed
        self.deskew = deskew
        self.splits: dict[str, Union[Subset, datasets.MNIST]] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, *IMAGE_SIZE)

    @property
    def class_names(self) -> list[str]:
        return list(DATASETS[self.dataset].classes)  # torchvision's names of the dataset's labels

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.data_dir, DATASETS[self.dataset].__name__, "raw")

    def _read(self, train: bool, download: bool = False) -> datasets.MNIST:
        cls = DATASETS[self.dataset]
        missing = [f for f in IDX_FILES if not os.path.exists(os.path.join(self.raw_folder, f))]
        if missing and not download:
            raise self._missing_error(missing)
        try:
            return cls(self.data_dir, train=train, download=download and bool(missing), transform=transforms.ToTensor())
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised as a message that says what to do
            missing = [f for f in IDX_FILES if not os.path.exists(os.path.join(self.raw_folder, f))]
            if missing:
                raise self._missing_error(missing, reason=f"download failed: {err}") from None
            check_raw_folder(self.raw_folder)  # names the bad file when the files are malformed
            raise DataError(f"could not read {self.dataset} from {self.raw_folder}: {err}") from None

    def _missing_error(self, missing: list[str], reason: str = "download is off") -> DataError:
        return DataError(
            f"{self.dataset} data not found in {os.path.abspath(self.raw_folder)} ({reason}).\n"
            f"Expected the four files {', '.join(IDX_FILES)} there (missing: {', '.join(missing)}).\n"
            f"On an offline machine, copy them (uncompressed) into that folder, or point "
            f"--data.data_dir at a folder that holds {DATASETS[self.dataset].__name__}/raw/, "
            "and set --data.download false."
        )

    def prepare_data(self) -> None:
        # Runs on one process per node: the only place that may download.
        for train in (True, False):
            self._read(train, download=self.download)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        check_raw_folder(self.raw_folder)
        full_train, test = self._read(train=True), self._read(train=False)
        if self.deskew:  # the torchvision datasets serve the deskewed images on both data paths
            for ds in (full_train, test):
                ds.data = deskewed_uint8(ds.data)
        n = len(full_train)
        if not 0 < self.val_size < n:
            raise DataError(f"data.val_size must be between 1 and {n - 1} (the training set has {n} images)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        train_idx, val_idx = perm[self.val_size :], perm[: self.val_size]
        if self.classes is not None:
            keep = torch.isin(full_train.targets, torch.as_tensor(self.classes))
            train_idx, val_idx = train_idx[keep[train_idx]], val_idx[keep[val_idx]]
            if not len(train_idx) or not len(val_idx):
                raise DataError(f"data.classes={self.classes} leaves no training or validation images")
        self.splits = {
            "train": Subset(full_train, train_idx.tolist()),
            "val": Subset(full_train, val_idx.tolist()),
            "test": test,
        }

    def split_tensors(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images (uint8, N x 28 x 28) and labels, as torchvision read them
        (validation and test binarized once, to 0 or 255, when ``binarize`` is on)."""
        ds = self.splits[split]
        if isinstance(ds, Subset):
            idx = torch.as_tensor(ds.indices)
            images, labels = ds.dataset.data[idx], ds.dataset.targets[idx]
        else:
            images, labels = ds.data, ds.targets
        if self.binarize and split != "train":
            seed = self.binarize_seed + (0 if split == "val" else 1)
            draw = torch.bernoulli(images.float() / 255.0, generator=torch.Generator().manual_seed(seed))
            images = draw.to(torch.uint8) * 255
        return images, labels

    def split_dataset(self, split: Split):
        return self.splits[split]  # torchvision's dataset: ToTensor on each image
