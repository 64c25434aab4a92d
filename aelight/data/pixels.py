"""Pixels as every part of aelight sees them: float in [0, 1], channels first."""

import torch
from torch import Tensor

from aelight.components.deskew import deskewed


def to_float_images(images: Tensor) -> Tensor:
    """uint8 images (N, H, W), one channel, or (N, C, H, W) to float in [0, 1] of shape
    (N, C, H, W), on their own device."""
    return (images.unsqueeze(1) if images.dim() == 3 else images).float().div_(255.0)


def deskewed_uint8(images: Tensor, chunk: int = 10000) -> Tensor:
    """uint8 images (N, H, W) deskewed (``aelight.components.deskewed``), rounded back to uint8."""
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float().div_(255.0)
        out[start : start + chunk] = deskewed(part).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out
