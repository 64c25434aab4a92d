"""A small convolutional encoder/decoder for 28x28 single-channel images."""

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from aelight.components.mlp import activation as make_activation
from aelight.components.mlp import check_sizes, logit


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (28 -> 14 -> 7), then a Linear layer to ``out_features``."""

    def __init__(
        self,
        out_features: int = 32,
        channels: tuple[int, int] = (32, 64),
        in_channels: int = 1,
        activation: str = "relu",
        final_activation: Optional[str] = None,
    ):
        super().__init__()
        check_sizes("ConvEncoder", out_features=out_features, channels=list(channels), in_channels=in_channels)
        c1, c2 = channels
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1),
            make_activation(activation),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            make_activation(activation),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, out_features),
            make_activation(final_activation),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: Linear to 7x7 feature maps, two transposed convolutions to 28x28.

    Returns logits.
    """

    def __init__(
        self,
        in_features: int = 32,
        channels: tuple[int, int] = (64, 32),
        out_channels: int = 1,
        activation: str = "relu",
    ):
        super().__init__()
        check_sizes("ConvDecoder", in_features=in_features, channels=list(channels), out_channels=out_channels)
        c1, c2 = channels
        self.in_features = in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, c1 * 7 * 7),
            make_activation(activation),
            nn.Unflatten(1, (c1, 7, 7)),
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            make_activation(activation),
            nn.ConvTranspose2d(c2, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    @torch.no_grad()
    def set_output_bias(self, mean_image: Tensor) -> None:
        """Per-channel output bias at the logit of the mean pixel of each channel."""
        self.net[-1].bias.copy_(logit(mean_image.reshape(len(self.net[-1].bias), -1).mean(1)))


class ConvMapEncoder(nn.Module):
    """Stride-1 'same' convolutions: the code is a stack of full-resolution feature maps.

    ``out_features`` is the number of maps (the code's features at each pixel), as the
    convolutional winner-take-all autoencoder uses it.
    """

    def __init__(
        self,
        out_features: int = 128,
        hidden_channels: Sequence[int] = (),
        kernel_size: int = 5,
        in_channels: int = 1,
        activation: str = "relu",
    ):
        super().__init__()
        check_sizes("ConvMapEncoder", out_features=out_features, hidden_channels=list(hidden_channels))
        self.out_features = out_features
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([in_channels, *hidden_channels], [*hidden_channels, out_features]):
            layers += [nn.Conv2d(fan_in, fan_out, kernel_size, padding=kernel_size // 2), make_activation(activation)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvMapDecoder(nn.Module):
    """One linear transposed convolution from ``in_features`` feature maps to the image's pixel
    values (not logits; for :class:`aelight.models.WTAAE`): each active map unit paints one learned
    ``kernel_size`` x ``kernel_size`` stroke."""

    def __init__(self, in_features: int = 128, kernel_size: int = 11, out_channels: int = 1):
        super().__init__()
        check_sizes("ConvMapDecoder", in_features=in_features, out_channels=out_channels)
        self.in_features = in_features
        self.net = nn.Sequential(nn.ConvTranspose2d(in_features, out_channels, kernel_size, padding=kernel_size // 2))

    def forward(self, maps: Tensor) -> Tensor:
        return self.net(maps)

    @torch.no_grad()
    def set_output_bias(self, mean_image: Tensor) -> None:
        """Per-channel output bias at the mean pixel value (the output is linear)."""
        self.net[-1].bias.copy_(mean_image.reshape(len(self.net[-1].bias), -1).mean(1))
