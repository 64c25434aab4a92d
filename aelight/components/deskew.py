"""Deskewing: each image sheared so that its strokes stand upright, and centred on its centre of mass.

The classic moment-based preprocessing of handwritten digits (LeCun et al.'s MNIST table: it cuts
the pixel-space nearest-neighbour error by about a third). From an image's intensity moments, its
centre of mass (cx, cy) and skew alpha = cov(x, y) / var(y); the output pixel at (x, y) reads the
input at (x + alpha (y - c) + cx - c, y + cy - c), c the image's centre. Fixed, with no parameters:
the same function serves training and test images, so a model that uses it stays inductive.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelight.errors import ConfigError


def deskewed(images: Tensor) -> Tensor:
    """Images ``(N, 1, H, W)`` (or ``(N, H, W)``), non-negative intensities, deskewed and centred,
    same shape; an empty image is returned as it is."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    n, _, h, w = x.shape
    plane = x.float().sum(1)  # intensity per pixel, over channels
    mass = plane.sum((1, 2))
    ys = torch.arange(h, dtype=plane.dtype, device=x.device).view(1, h, 1)
    xs = torch.arange(w, dtype=plane.dtype, device=x.device).view(1, 1, w)
    safe_mass = mass.clamp_min(1e-12).view(n, 1, 1)
    cy = (plane * ys).sum((1, 2), keepdim=True) / safe_mass
    cx = (plane * xs).sum((1, 2), keepdim=True) / safe_mass
    var_y = (plane * (ys - cy) ** 2).sum((1, 2)) / safe_mass.view(n)
    cov_xy = (plane * (ys - cy) * (xs - cx)).sum((1, 2)) / safe_mass.view(n)
    alpha = torch.where(var_y > 1e-6, cov_xy / var_y.clamp_min(1e-6), torch.zeros_like(var_y))
    empty = mass <= 0
    alpha = alpha.masked_fill(empty, 0.0)
    # affine_grid works in [-1, 1] coordinates (align_corners=True: -1 and 1 are the outer pixels' centres)
    theta = torch.zeros(n, 2, 3, dtype=plane.dtype, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 0, 1] = alpha * (h - 1) / (w - 1)
    theta[:, 0, 2] = ((cx.view(n) - (w - 1) / 2) * 2 / (w - 1)).masked_fill(empty, 0.0)
    theta[:, 1, 1] = 1
    theta[:, 1, 2] = ((cy.view(n) - (h - 1) / 2) * 2 / (h - 1)).masked_fill(empty, 0.0)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=True)
    out = F.grid_sample(x.float(), grid, align_corners=True).to(x.dtype)
    return out if images.dim() == 4 else out.squeeze(1)


class Deskewed(nn.Module):
    """A network that reads deskewed images: ``network(deskewed(x))``. It has no parameters of its
    own and passes on the network's ``out_features``, so it stands wherever an encoder does."""

    def __init__(self, network: nn.Module, image_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        if image_shape[0] != 1:
            raise ConfigError(
                f"Deskewed: deskewing reads grayscale images (one channel), got images of shape {list(image_shape)}"
            )
        inner = getattr(network, "image_shape", None)
        if inner is not None and tuple(inner) != tuple(image_shape):
            raise ConfigError(
                f"Deskewed: its network takes images of shape {list(inner)} but the data serves {list(image_shape)}; "
                f"set network.init_args.image_shape to {list(image_shape)}"
            )
        self.network, self.image_shape = network, tuple(image_shape)
        if hasattr(network, "out_features"):
            self.out_features = network.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.network(deskewed(x))
