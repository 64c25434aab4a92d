"""Pixels as every part of aelight sees them: float in [0, 1], one channel."""

from torch import Tensor


def to_float_images(images: Tensor) -> Tensor:
    """uint8 images (N, H, W) to float in [0, 1] of shape (N, 1, H, W), on their own device."""
    return images.unsqueeze(1).float().div_(255.0)
