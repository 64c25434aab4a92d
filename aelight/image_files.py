"""Image files as aelight reads them, in training (``aelight.data.ImageFolderDataModule``) and in
``aelight score`` alike: which files are images, and how one becomes pixels (Pillow: converted to
grayscale or RGB, resized, centre-cropped). Plain Python with numpy and Pillow: the scoring side
imports this without torch, so an exported detector sees exactly the pixels its model trained on.
"""

import os
from collections.abc import Sequence
from typing import Optional

from aelight.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageFileError(DataError):
    """An image file is missing, unreadable, or does not fit the settings it is read with."""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def images_in(folder: str) -> list[str]:
    """The image files under ``folder`` (searched recursively, sorted; hidden files and folders
    skipped). Any other file there is an error that names it, in training and ``score`` alike: a
    stray file in an image folder is more likely a mistake than something to skip silently."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders if not is_hidden(f))
        for name in names:
            if is_hidden(name):
                continue
            if is_image_name(name):
                found.append(os.path.join(root, name))
            else:
                raise ImageFileError(
                    f"{os.path.join(root, name)}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); "
                    "move it out of the image folder"
                )
    return sorted(found)


def as_size(value, name: str) -> Optional[tuple[int, int]]:
    """A size setting (an int for a square, or [height, width]) as (height, width), or None."""
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise DataError(f"{name} must be a size in pixels (an int, or [height, width]), got {value}")
    return size


def image_bands(image) -> int:
    """1 for a grayscale image, 3 for a colour one (alpha is not a channel aelight reads)."""
    if image.mode == "P":  # a palette: its colours decide
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return len([b for b in image.getbands() if b != "A"])


def open_image(path: str):
    """The decoded Pillow image of ``path``, or one line saying why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageFileError(f"{path}: not a readable image ({err})") from None
    return image


def read_pixels(
    path: str,
    channels: int,
    resize: Optional[Sequence[int]] = None,
    center_crop: Optional[Sequence[int]] = None,
):
    """One image as uint8 numpy (H, W, C): converted to ``channels`` (1: grayscale, 3: RGB; an
    image of the other kind is converted, as Pillow converts it), resized to ``resize`` (height,
    width; bilinear), then centre-cropped to ``center_crop``."""
    import numpy as np

    image = open_image(path)
    image = image.convert("L" if channels == 1 else "RGB")
    if resize:
        image = image.resize((resize[1], resize[0]), resample=2)  # 2: Pillow's BILINEAR
    if center_crop:
        height, width = center_crop
        if image.height < height or image.width < width:
            raise ImageFileError(
                f"{path}: {image.width}x{image.height} pixels{' after resizing' if resize else ''}, smaller than "
                f"the centre crop {width}x{height}; set a larger resize or a smaller center_crop"
            )
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if channels == 1 else pixels
