"""Which images of a folder are which split and label: the three layouts that
``aelight.data.ImageFolderDataModule`` understands (anomaly, split, classes), scanned once."""

import os

import numpy as np
import torch

from aelight.errors import DataError
from aelight.image_files import images_in

NORMAL = "good"  # the anomaly layout's folder of normal images


class FolderLayout:
    """The files of each split and the label names, as a folder's layout gives them (no pixels read)."""

    def __init__(self, kind: str, files: dict[str, list[str]], labels: dict[str, list[int]], class_names: list[str]):
        self.kind, self.files, self.labels, self.class_names = kind, files, labels, class_names


def _subfolders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _loose_images(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _class_files(folder: str, class_names: list[str]) -> tuple[list[str], list[int]]:
    """Every image in ``folder/<class>/`` (searched recursively) with its class's index."""
    files, labels = [], []
    for label, name in enumerate(class_names):
        path = os.path.join(folder, name)
        found = images_in(path) if os.path.isdir(path) else []
        files += found
        labels += [label] * len(found)
    return files, labels


def _non_empty(files: list[str], where: str) -> list[str]:
    if not files:
        raise DataError(f"{where}: no images there (PNG, JPEG, BMP or TIFF files are read)")
    return files


def _seeded_shares(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into the ``fractions`` (each at least 1 item) and the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [max(1, round(f * n)) for f in fractions]
    if sum(sizes) >= n:
        raise DataError(f"{n} images are too few to hold out {' and '.join(map(str, sizes))} of them")
    cuts = np.cumsum(sizes).tolist()
    return list(perm.tensor_split(cuts))


def scan_layout(root: str, val_fraction: float, test_fraction: float, split_seed: int) -> FolderLayout:
    """The layout of ``root`` (see the module's docstring); one line naming what does not fit."""
    if not os.path.isdir(root):
        raise DataError(f"data.root {root}: no such folder; give the folder of your images")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(os.path.join(train_dir, NORMAL)):  # the anomaly layout
        others = [f for f in _subfolders(train_dir) if f != NORMAL] + _loose_images(train_dir)
        if others:
            raise DataError(
                f"{train_dir}: the anomaly layout trains on {NORMAL}/ only, but {others[0]} is there too; "
                f"move defective images to test/<defect>/"
            )
        normal = _non_empty(images_in(os.path.join(train_dir, NORMAL)), os.path.join(train_dir, NORMAL))
        val_idx, train_idx = _seeded_shares(len(normal), [val_fraction], split_seed)
        files = {"train": [normal[i] for i in train_idx], "val": [normal[i] for i in val_idx]}
        labels = {"train": [0] * len(train_idx), "val": [0] * len(val_idx)}
        class_names = [NORMAL]
        if os.path.isdir(test_dir):
            if _loose_images(test_dir):
                raise DataError(
                    f"{_loose_images(test_dir)[0]}: test/ of the anomaly layout holds folders only "
                    f"({NORMAL}/ and one per defect type)"
                )
            if not os.path.isdir(os.path.join(test_dir, NORMAL)):
                raise DataError(
                    f"{test_dir}: no {NORMAL}/ folder there; the anomaly layout needs test/{NORMAL}/ (normal test "
                    "images) beside test/<defect>/ folders, for the scores of both kinds"
                )
            class_names += [f for f in _subfolders(test_dir) if f != NORMAL]
            files["test"], labels["test"] = _class_files(test_dir, class_names)
            _non_empty(images_in(os.path.join(test_dir, NORMAL)), os.path.join(test_dir, NORMAL))
        return FolderLayout("anomaly", files, labels, class_names)
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):  # train/<class>/ and test/<class>/
        class_names = sorted(set(_subfolders(train_dir)) | set(_subfolders(test_dir)))
        if not class_names:
            raise DataError(f"{train_dir}: no class folders there; put the images in train/<class>/ and test/<class>/")
        train_files, train_labels = _class_files(train_dir, class_names)
        test_files, test_labels = _class_files(test_dir, class_names)
        _non_empty(train_files, train_dir), _non_empty(test_files, test_dir)
        val_idx, train_idx = _seeded_shares(len(train_files), [val_fraction], split_seed)
        files = {"train": [train_files[i] for i in train_idx], "val": [train_files[i] for i in val_idx]}
        labels = {"train": [train_labels[i] for i in train_idx], "val": [train_labels[i] for i in val_idx]}
        files["test"], labels["test"] = test_files, test_labels
        return FolderLayout("split", files, labels, class_names)
    class_names = _subfolders(root)
    loose = _loose_images(root)
    if class_names and loose:
        raise DataError(
            f"{loose[0]}: {root} holds both class folders and loose files; put every image in a class folder"
        )
    if class_names:
        all_files, all_labels = _class_files(root, class_names)
    else:  # the images themselves: one class
        all_files, class_names = images_in(root), [os.path.basename(os.path.normpath(root))]
        all_labels = [0] * len(all_files)
    _non_empty(all_files, root)
    val_idx, test_idx, train_idx = _seeded_shares(len(all_files), [val_fraction, test_fraction], split_seed)
    files = {s: [all_files[i] for i in idx] for s, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    labels = {
        s: [all_labels[i] for i in idx] for s, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
    }
    return FolderLayout("classes", files, labels, class_names)
