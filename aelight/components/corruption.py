"""Input corruptions for denoising: each maps a batch in [0, 1] to a corrupted batch in [0, 1].

All work happens on the batch's own device; pass a ``torch.Generator`` on that device for
reproducible noise (evaluation uses a fixed seed so runs are comparable).
"""

from typing import Literal, Optional

import torch
from torch import Tensor

from aelight.errors import ConfigError

NoiseKind = Literal["gaussian", "masking", "salt_and_pepper"]


def _uniform(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def gaussian(x: Tensor, std: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive Gaussian noise, clipped back to the pixel range."""
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return (x + std * noise).clamp_(0.0, 1.0)


def masking(x: Tensor, fraction: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Set a random ``fraction`` of the pixels to zero."""
    return x * (_uniform(x, generator) >= fraction)


def salt_and_pepper(x: Tensor, fraction: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Set a random ``fraction`` of the pixels to 0 or 1 (half each)."""
    u = _uniform(x, generator)
    out = torch.where(u < fraction / 2, torch.zeros_like(x), x)
    return torch.where((u >= fraction / 2) & (u < fraction), torch.ones_like(x), out)


CORRUPTIONS = {"gaussian": gaussian, "masking": masking, "salt_and_pepper": salt_and_pepper}


def check_noise(kind: str, level: float) -> None:
    """A noise kind aelight knows and a level in [0, 1] (a std or a fraction of pixels in [0, 1])."""
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown noise kind {kind!r}; choose one of {sorted(CORRUPTIONS)}")
    if not 0 <= level <= 1:
        what = "the noise's std" if kind == "gaussian" else "the fraction of pixels corrupted"
        raise ConfigError(f"noise_level must be between 0 and 1 ({what}, on pixels in [0, 1]), got {level}")


def corrupt(x: Tensor, kind: NoiseKind, level: float, generator: Optional[torch.Generator] = None) -> Tensor:
    check_noise(kind, level)
    return CORRUPTIONS[kind](x, level, generator)
