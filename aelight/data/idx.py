"""Checks of IDX files (the MNIST format) that name the file and what is wrong with it.

torchvision reads the files; these checks only run when its reader fails or before it runs,
so that a truncated download or a wrong file gives a message instead of a reshape error.
"""

import math
import os
import struct

from aelight.errors import DataError

IDX_FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}
UBYTE = 0x08
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


def check_idx_file(path: str, ndim: int) -> tuple[int, ...]:
    """Return the dims of an uncompressed IDX file of unsigned bytes, or raise DataError."""
    size = os.path.getsize(path)
    header = 4 + 4 * ndim
    if size < header:
        raise DataError(f"{path}: file is truncated ({size} bytes, shorter than its {header}-byte header)")
    with open(path, "rb") as f:
        head = f.read(header)
    zero, dtype, file_ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or dtype != UBYTE or file_ndim != ndim:
        raise DataError(
            f"{path}: wrong magic number 0x{head[:4].hex()} (expected 0x0000080{ndim}: unsigned bytes, "
            f"{ndim} dimension{'s' if ndim > 1 else ''}); this is not an MNIST-format IDX file"
        )
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = header + math.prod(dims)
    if size != expected:
        raise DataError(
            f"{path}: wrong size: the header announces dims {dims} ({expected} bytes) but the file has {size} "
            "bytes; it is truncated or corrupt, so download or copy it again"
        )
    return dims


def check_labels(path: str) -> None:
    """Every label of an IDX label file must be a class from 0 to 9."""
    with open(path, "rb") as f:
        f.seek(8)
        labels = f.read()
    bad = max(labels, default=0)
    if bad >= NUM_CLASSES:
        raise DataError(
            f"{path}: label {bad} at position {labels.index(bad)} is outside 0..{NUM_CLASSES - 1}; "
            "the file is corrupt or is not an MNIST-format label file"
        )


def check_raw_folder(raw_folder: str) -> None:
    """Check every IDX file in a torchvision ``<root>/<Dataset>/raw`` folder and that images and labels agree."""
    dims = {name: check_idx_file(os.path.join(raw_folder, name), nd) for name, nd in IDX_FILES.items()}
    for split in ("train", "t10k"):
        images, labels = dims[f"{split}-images-idx3-ubyte"], dims[f"{split}-labels-idx1-ubyte"]
        images_path = os.path.join(raw_folder, f"{split}-images-idx3-ubyte")
        if images[0] == 0:
            raise DataError(f"{images_path}: the file holds no images (its header says 0); copy or download it again")
        if tuple(images[1:]) != IMAGE_SIZE:
            raise DataError(
                f"{images_path}: images are {images[1]}x{images[2]} pixels, but MNIST-format data sets have "
                f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}; this is not an MNIST, Fashion-MNIST or KMNIST file"
            )
        check_labels(os.path.join(raw_folder, f"{split}-labels-idx1-ubyte"))
        if images[0] != labels[0]:
            raise DataError(
                f"{raw_folder}: {split}-images-idx3-ubyte holds {images[0]} images but "
                f"{split}-labels-idx1-ubyte holds {labels[0]} labels"
            )
