"""Convolutional encoders and decoders: stride-2 stages to a code vector and back, and the
full-resolution feature maps of the winner-take-all autoencoder."""

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelight.components.mlp import activation as make_activation
from aelight.components.mlp import check_sizes, logit
from aelight.errors import ConfigError

# activations that never decrease: a map's largest value is the activation of its largest input
NON_DECREASING = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Identity)


def downsampled_size(owner: str, image_shape: Sequence[int], stages: int) -> tuple[int, int]:
    """Height and width after ``stages`` stride-2 convolutions; each must halve evenly."""
    check_sizes(owner, image_shape=list(image_shape))
    if len(image_shape) != 3:
        raise ConfigError(f"{owner}: image_shape must be [channels, height, width], got {list(image_shape)}")
    _, height, width = image_shape
    step = 2**stages
    if height % step or width % step:
        raise ConfigError(
            f"{owner}: its {stages} stride-2 stages need a height and width divisible by "
            f"{step}, but the images are {height}x{width}; set the data's resize or center_crop to a multiple of {step}"
        )
    return height // step, width // step


class ConvEncoder(nn.Module):
    """Stride-2 convolutions, one stage per entry of ``channels`` (28 -> 14 -> 7 with two), then a
    Linear layer to ``out_features``.

    ``depth``: convolutions per resolution; above 1, 3x3 stride-1 convolutions come before each
    stride-2 one (more capacity at the same code size, for restoration tasks). ``image_shape``
    (channels, height, width): the images it reads, linked from the data by the CLI; height and
    width must divide by 2 to the number of stages."""

    def __init__(
        self,
        out_features: int = 32,
        channels: Sequence[int] = (32, 64),
        image_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
        final_activation: Optional[str] = None,
        depth: int = 1,
    ):
        super().__init__()
        check_sizes("ConvEncoder", out_features=out_features, channels=list(channels), depth=depth)
        height, width = downsampled_size("ConvEncoder", image_shape, len(channels))
        self.out_features, self.image_shape = out_features, tuple(image_shape)
        layers: list[nn.Module] = []
        fan_in = image_shape[0]
        for width_ in channels:
            for _ in range(depth - 1):
                layers += [nn.Conv2d(fan_in, width_, 3, padding=1), make_activation(activation)]
                fan_in = width_
            layers += [nn.Conv2d(fan_in, width_, 4, stride=2, padding=1), make_activation(activation)]
            fan_in = width_
        self.net = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels[-1] * height * width, out_features),
            make_activation(final_activation),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: Linear to feature maps of ``channels[0]``, one transposed
    convolution per entry of ``channels`` up to the image (``depth`` above 1: 3x3 convolutions after
    each, the last one giving the output).

    Returns logits.
    """

    def __init__(
        self,
        in_features: int = 32,
        channels: Sequence[int] = (64, 32),
        image_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
        depth: int = 1,
    ):
        super().__init__()
        check_sizes("ConvDecoder", in_features=in_features, channels=list(channels), depth=depth)
        height, width = downsampled_size("ConvDecoder", image_shape, len(channels))
        self.in_features, self.image_shape = in_features, tuple(image_shape)
        # each stage: a transposed convolution up ("up"), then depth - 1 3x3 ones ("same"); the last gives the image
        plan = []
        for i, fan_in in enumerate(channels):
            width_ = channels[min(i + 1, len(channels) - 1)]
            plan += [("up", fan_in, width_)] + [("same", width_, width_)] * (depth - 1)
        plan[-1] = (*plan[-1][:2], image_shape[0])
        layers: list[nn.Module] = [
            nn.Linear(in_features, channels[0] * height * width),
            make_activation(activation),
            nn.Unflatten(1, (channels[0], height, width)),
        ]
        for i, (kind, fan_in, fan_out) in enumerate(plan):
            if kind == "up":
                layers.append(nn.ConvTranspose2d(fan_in, fan_out, 4, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(fan_in, fan_out, 3, padding=1))
            if i < len(plan) - 1:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

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
        image_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
    ):
        super().__init__()
        check_sizes(
            "ConvMapEncoder", out_features=out_features, hidden_channels=list(hidden_channels), image_shape=image_shape
        )
        self.out_features, self.image_shape = out_features, tuple(image_shape)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip([image_shape[0], *hidden_channels], [*hidden_channels, out_features]):
            layers += [nn.Conv2d(fan_in, fan_out, kernel_size, padding=kernel_size // 2), make_activation(activation)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def peaks(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each map's largest value per image and its flat position (both B x maps), as
        ``forward(x).flatten(2).max(2)`` gives them. With one convolution and a non-decreasing
        activation, and gradients wanted, the positions are found without autograd and each peak
        is recomputed from its own input patch: backward then costs the peaks' patches instead of
        the full maps (most of a winner-take-all training step with a thousand maps)."""
        conv, act = self.net[0], self.net[-1]
        if len(self.net) != 2 or not isinstance(act, NON_DECREASING) or not torch.is_grad_enabled():
            return self(x).flatten(2).max(2)
        with torch.no_grad():
            positions = conv(x).flatten(2).argmax(2)
        patches = F.unfold(x, conv.kernel_size, padding=conv.padding)  # B x (C * k * k) x positions
        at_peak = patches.gather(2, positions[:, None, :].expand(-1, patches.shape[1], -1))
        values = torch.einsum("bkm,mk->bm", at_peak, conv.weight.flatten(1)) + conv.bias
        return act(values), positions


class ConvMapDecoder(nn.Module):
    """One linear transposed convolution from ``in_features`` feature maps to the image's pixel
    values (not logits; for :class:`aelight.models.WTAAE`): each active map unit paints one learned
    ``kernel_size`` x ``kernel_size`` stroke."""

    def __init__(self, in_features: int = 128, kernel_size: int = 11, image_shape: Sequence[int] = (1, 28, 28)):
        super().__init__()
        check_sizes("ConvMapDecoder", in_features=in_features, image_shape=image_shape)
        self.in_features, self.image_shape = in_features, tuple(image_shape)
        self.net = nn.Sequential(nn.ConvTranspose2d(in_features, image_shape[0], kernel_size, padding=kernel_size // 2))

    def forward(self, maps: Tensor) -> Tensor:
        return self.net(maps)

    def paint(self, values: Tensor, positions: Tensor, size: tuple[int, int]) -> Tensor:
        """``forward`` of feature maps that are zero but for one value per map: ``values`` (B x maps)
        at the flat ``positions`` (B x maps) of an image of ``size``, computed from the non-zero
        values alone: each adds its map's kernel, scaled, at its position. With a unit or two active
        per map and image this costs a fraction of the dense transposed convolution (the winner-take-all
        autoencoder's decoder, whose cost would otherwise grow with the number of maps)."""
        conv = self.net[0]
        kernel = conv.kernel_size[0]
        if kernel % 2 == 0:  # the dense path's output is one pixel smaller; keep its meaning
            maps = torch.zeros(*values.shape, size[0] * size[1], dtype=values.dtype, device=values.device)
            return self(maps.scatter(2, positions[..., None], values[..., None]).view(*values.shape, *size))
        pad, (height, width) = kernel // 2, size
        canvas_h, canvas_w = height + 2 * pad, width + 2 * pad
        image, unit = values.nonzero(as_tuple=True)
        weight = conv.weight[unit].flatten(2)  # (active, channels, kernel * kernel)
        strokes = values[image, unit][:, None, None] * weight
        rows = torch.arange(kernel, device=values.device)
        offsets = (rows[:, None] * canvas_w + rows[None, :]).flatten()  # a kernel's cells on the canvas
        corner = positions[image, unit] // width * canvas_w + positions[image, unit] % width
        index = (image * canvas_h * canvas_w + corner)[:, None] + offsets  # (active, kernel * kernel)
        channels = weight.shape[1]
        canvas = strokes.new_zeros(channels, len(values) * canvas_h * canvas_w)
        canvas.index_add_(1, index.flatten(), strokes.permute(1, 0, 2).reshape(channels, -1))
        canvas = canvas.view(channels, len(values), canvas_h, canvas_w).permute(1, 0, 2, 3)
        # contiguous, as the dense path's output is (several channels would otherwise leave a permuted view)
        return (canvas[:, :, pad : pad + height, pad : pad + width] + conv.bias.view(1, -1, 1, 1)).contiguous()

    @torch.no_grad()
    def set_output_bias(self, mean_image: Tensor) -> None:
        """Per-channel output bias at the mean pixel value (the output is linear)."""
        self.net[-1].bias.copy_(mean_image.reshape(len(self.net[-1].bias), -1).mean(1))
