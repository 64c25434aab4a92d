"""A checkpoint's run's data, read as that run read it: an application or an export gives a model
the images it learnt from (the same pixel settings, the same image folder and splits)."""

from typing import Callable, Optional

import torch
from torch import Tensor

from aelight.data import ImageFolderDataModule, MNISTDataModule
from aelight.data.base import ImageDataModule
from aelight.data.pixels import to_float_images
from aelight.errors import AelightError

# Data settings that change the pixels a model learnt from, as the run's data config (saved in the
# checkpoint) says.
PIXEL_SETTINGS = ("deskew",)
# What an image folder's run read, and how: an application reads the same images the same way.
FOLDER_SETTINGS = ("root", "channels", "resize", "center_crop", "val_fraction", "test_fraction", "split_seed",
                   "cache_dir", "cache")  # fmt: skip


def is_folder_run(trained: dict) -> bool:
    """Whether a run's data settings (``aelight.run.models.load_run``) are those of an image folder."""
    return "root" in trained


def run_data(
    trained: dict, data_dir: str, root: Optional[str] = None, deskew: Optional[bool] = None, **mnist
) -> ImageDataModule:
    """The data of a checkpoint's run (``trained``: its data settings), set up: its image folder read
    as the run read it (from ``root`` if given, else where it trained), or MNIST from ``data_dir``
    with the run's pixel settings and the options ``mnist``. ``deskew`` (the command's
    ``--data.deskew``) may only repeat the run's own setting."""
    if deskew is not None and deskew != bool(trained.get("deskew", False)):
        raise AelightError(
            f"--data.deskew {str(deskew).lower()}: the checkpoint's run read "
            f"{'deskewed' if trained.get('deskew') else 'raw'} images, and its model is given the images it learnt "
            "from; leave --data.deskew out"
        )
    if not is_folder_run(trained):
        return mnist_data(data_dir, **{k: trained[k] for k in PIXEL_SETTINGS if k in trained}, **mnist)
    settings = {k: trained[k] for k in FOLDER_SETTINGS if k in trained}
    if root:
        settings["root"] = root
    dm = ImageFolderDataModule(**settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def mnist_data(data_dir: str, **settings) -> MNISTDataModule:
    """MNIST from ``data_dir`` (never downloaded), set up."""
    dm = MNISTDataModule(data_dir=data_dir, download=False, **settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def images_and_labels(dm: ImageDataModule, split: str, device: str) -> tuple[Tensor, Tensor]:
    """A split as float images in [0, 1] (N, C, H, W) and labels, on ``device``."""
    images, labels = dm.split_tensors(split)
    return to_float_images(images.to(device)), labels.to(device)


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 2000) -> Tensor:
    """``fn`` of ``x``, ``batch_size`` rows at a time, written into one preallocated result (a list
    of chunks then concatenated would hold wide outputs, such as 60,000 feature vectors, twice)."""
    out = None
    for start, chunk in zip(range(0, len(x), batch_size), x.split(batch_size)):
        result = fn(chunk)
        if out is None:
            out = result.new_empty((len(x), *result.shape[1:]))
        out[start : start + len(chunk)] = result
    return out if out is not None else fn(x)
