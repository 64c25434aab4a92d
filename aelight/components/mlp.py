"""Fully connected networks: the encoder and decoder for flattened images, and a network from
one vector to another (between the stochastic layers of a hierarchical VAE)."""

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from aelight.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU}


def logit(p: Tensor, eps: float = 1e-3) -> Tensor:
    p = p.float().clamp(eps, 1 - eps)
    return (p / (1 - p)).log()


def activation(name: Optional[str]) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)} or null")
    return ACTIVATIONS[name]()


def check_sizes(owner: str, **sizes) -> None:
    """Every layer size (an int or a list of ints) must be at least 1."""
    for name, value in sizes.items():
        for size in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(size, int) or size < 1:
                raise ConfigError(f"{owner}: {name} must be at least 1 (a layer size), got {value}")


def mlp(sizes: Sequence[int], hidden_activation: str, final_activation: Optional[str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers += [nn.Linear(fan_in, fan_out), activation(final_activation if last else hidden_activation)]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flatten the image, then Linear layers ``in -> hidden_dims... -> out_features``.

    ``image_shape`` (channels, height, width): the images it reads; the CLI links it from the data.

    The defaults are the reference model's encoder: 784 -> 32 with a ReLU on the code.
    """

    def __init__(
        self,
        out_features: int = 32,
        hidden_dims: Sequence[int] = (),
        image_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
        final_activation: Optional[str] = "relu",
    ):
        super().__init__()
        check_sizes("MLPEncoder", out_features=out_features, hidden_dims=list(hidden_dims), image_shape=image_shape)
        self.out_features = out_features
        self.image_shape = tuple(image_shape)
        self.net = mlp([math.prod(image_shape), *hidden_dims, out_features], activation, final_activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """Linear layers ``in_features -> hidden_dims... -> prod(image_shape)``, reshaped to the image.

    Returns logits (no final activation); the model maps them to pixel space.
    """

    def __init__(
        self,
        in_features: int = 32,
        hidden_dims: Sequence[int] = (),
        image_shape: Sequence[int] = (1, 28, 28),
        activation: str = "relu",
    ):
        super().__init__()
        check_sizes("MLPDecoder", in_features=in_features, hidden_dims=list(hidden_dims), image_shape=image_shape)
        self.in_features = in_features
        self.image_shape = tuple(image_shape)
        self.net = mlp([in_features, *hidden_dims, math.prod(image_shape)], activation, None)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)

    @torch.no_grad()
    def set_output_bias(self, mean_image: Tensor) -> None:
        """Make a zero code decode to ``mean_image`` (pixels in [0, 1])."""
        self.net[-2].bias.copy_(logit(mean_image).flatten())


class MLP(nn.Module):
    """Linear layers ``in_features -> hidden_dims... -> out_features`` on vectors (a code to a code),
    with ``activation`` between them and ``final_activation`` (none by default) on the output."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        final_activation: Optional[str] = None,
    ):
        super().__init__()
        check_sizes("MLP", in_features=in_features, out_features=out_features, hidden_dims=list(hidden_dims))
        self.in_features, self.out_features = in_features, out_features
        self.net = mlp([in_features, *hidden_dims, out_features], activation, final_activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
