"""Convolutional winner-take-all autoencoder (Makhzani & Frey, NIPS 2015).

The encoder gives full-resolution feature maps; only each map's largest activation survives
(spatial sparsity) and, in training, only in the ``lifetime_sparsity`` fraction of the batch
where that winner is strongest (lifetime sparsity). A linear transposed convolution paints the
image back from those few winners, so each map learns a stroke-like part; that decoder's output
is the pixel value itself (no sigmoid), as in the paper. For downstream use
``encode`` returns the dense maps max-pooled to a small grid: shift-tolerant part detectors that a
linear classifier separates well.
"""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from aelight.errors import ConfigError
from aelight.models.autoencoder import AE, build_network


def spatial_winners(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Each map's largest value per image and its flat position (both B x maps); the rest of the map
    is zero (ties keep one position)."""
    return maps.flatten(2).max(2)


def strongest(peaks: Tensor, k: int, dim: int) -> Tensor:
    """Keep the ``k`` highest of the (batch x maps) ``peaks`` along ``dim``, zero the others."""
    threshold = peaks.topk(k, dim=dim).values.narrow(dim, k - 1, 1)
    return peaks * (peaks >= threshold).to(peaks.dtype)


def lifetime_winners(peaks: Tensor, rate: float) -> Tensor:
    """Keep a map's peak only in the ``rate`` fraction of the batch (at least one image) where it is highest."""
    return strongest(peaks, max(1, int(rate * len(peaks))), dim=0)


class WTAAE(AE):
    """``lifetime_sparsity``: fraction of the batch in which each map may win (1 turns it off).
    ``pool_size`` / ``pool_stride``: the max-pooling of the maps that ``encode`` returns."""

    @classmethod
    def default_networks(cls, encoder_out_features: Optional[int] = None) -> dict[str, dict]:
        """128 maps of one 5x5 convolution, painted back by 11x11 strokes."""
        return {
            "encoder": {"class_path": "aelight.components.ConvMapEncoder", "init_args": {"out_features": 128}},
            "decoder": {
                "class_path": "aelight.components.ConvMapDecoder",
                "init_args": {"in_features": encoder_out_features or 128},
            },
        }

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        lifetime_sparsity: float = 0.05,
        pool_size: int = 6,
        pool_stride: int = 4,
        **kwargs,
    ):
        encoder = encoder if encoder is not None else build_network(self.default_networks()["encoder"])
        if decoder is None:
            decoder = build_network(self.default_networks(encoder.out_features)["decoder"])
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if not 0 < lifetime_sparsity <= 1:
            raise ConfigError(f"WTAAE: lifetime_sparsity must be in (0, 1], got {lifetime_sparsity}")
        self.lifetime_sparsity, self.pool_size, self.pool_stride = lifetime_sparsity, pool_size, pool_stride

    def winners(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The winners' values and positions (B x maps; a value of 0: the map is silent). Training:
        spatial and lifetime winners. Otherwise each image keeps its strongest ``lifetime_sparsity``
        share of maps, as many as training showed the decoder on average, so that evaluation does not
        depend on the batch and val/loss tracks training."""
        peaks_of = getattr(self.encoder, "peaks", None)  # ConvMapEncoder's: gradients through the peaks alone
        peaks, positions = peaks_of(x) if peaks_of else spatial_winners(self.encoder(x))
        if self.lifetime_sparsity == 1:
            return peaks, positions
        if self.training:
            return lifetime_winners(peaks, self.lifetime_sparsity), positions
        return strongest(peaks, max(1, round(self.lifetime_sparsity * peaks.shape[1])), dim=1), positions

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        values, positions = self.winners(x)
        # linear: strokes add up, and MSE trains them directly; painted from the winners alone
        pixels = self.decoder.paint(values, positions, x.shape[-2:])
        return {"z": values, "positions": positions, "logits": pixels, "recon": pixels}

    def decode(self, z: Tensor) -> Tensor:
        """Dense feature maps to pixels in [0, 1]."""
        return self.decoder(z).clamp(0, 1)

    def encode(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.encoder(x), self.pool_size, self.pool_stride).flatten(1)

    def reconstruct(self, x: Tensor) -> Tensor:
        values, positions = self.winners(x)
        return self.decoder.paint(values, positions, x.shape[-2:]).clamp(0, 1)
