"""Attribute-restoration autoencoder for anomaly detection (Ye et al., "Attribute Restoration
Framework for Anomaly Detection", 2020; its first version: "Inverse-Transform AutoEncoder").

Training erases an attribute of each image, its orientation: the model sees the image turned by a
random multiple of 90 degrees (and, with ``views: 8``, mirrored) and must restore the upright
original. Restoring orientation needs what the normal class looks like upright, which an identity
map cannot give; an image of another class is restored as the normal class would be, badly.

The anomaly score restores every view of an image and measures each restoration against the
image, relative to the image's ink: sum (x - x')^2 / sum x. A plain mean squared error favours
thin images (a "1" has few pixels to get wrong, whatever the model learnt); the relative error
compares images of little and much ink on one scale.

With ``neighbours: k`` the model also keeps a memory of the normal training images' codes (the
codes of all their views, side by side, scaled to unit length) and adds how far an image's codes
are from their k nearest in memory: an image that restores well but is coded unlike any normal
image still stands out. The two terms are put on one scale by the mean and spread of their logs
over held-out normal images (``fit_scorer``), then added.
"""

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelight.errors import ConfigError
from aelight.models.autoencoder import AE

VIEWS = (4, 8)  # the four rotations; with their mirror images


def oriented(x: Tensor, view: int) -> Tensor:
    """View ``view`` of a batch of images (B, C, H, W): turned by ``view % 4`` quarter turns,
    mirrored left-right for views 4 to 7. Written with transposes and flips, which ONNX has (it has
    no rot90), so an exported detector turns images as training did."""
    quarter_turns = view % 4
    if quarter_turns == 1:
        turned = x.transpose(-2, -1).flip(-2)
    elif quarter_turns == 2:
        turned = x.flip((-2, -1))
    elif quarter_turns == 3:
        turned = x.transpose(-2, -1).flip(-1)
    else:
        turned = x
    return turned.flip(-1) if view >= 4 else turned


def random_views(x: Tensor, views: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each image of the batch in one of its first ``views`` views, drawn uniformly (square images)."""
    drawn = torch.randint(views, (len(x),), device=x.device, generator=generator)
    every = torch.stack([oriented(x, v) for v in range(views)])  # (views, B, C, H, W)
    return every[drawn, torch.arange(len(x), device=x.device)]


def relative_error(restored: Tensor, x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per image: the squared error of ``restored`` against ``x``, relative to the ink of ``x``
    (sum of its pixel values): sum (x - x')^2 / sum x."""
    squared = (restored.float() - x.float()).pow(2).flatten(1).sum(1)
    return squared / x.float().flatten(1).sum(1).clamp_min(eps)


def nearest_distance(queries: Tensor, memory: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Per query row: the mean Euclidean distance to its ``k`` nearest rows of ``memory``."""
    k = min(k, len(memory))
    # in float64: near neighbours on the unit sphere are close, and float32's |q|^2 + |m|^2 - 2 q.m
    # (cdist's matrix-product form) loses most digits of a small distance; every runtime agrees in float64
    memory = memory.double()

    def distance(q: Tensor) -> Tensor:
        return torch.cdist(q.double(), memory).topk(k, largest=False).values.mean(1).to(queries.dtype)

    if len(queries) <= chunk:  # in one piece (also what a traced export records, for any batch size)
        return distance(queries)
    return torch.cat([distance(q) for q in queries.split(chunk)])


@dataclass
class Standardizer:
    """Mean and standard deviation of a score's log over held-out normal images."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: Tensor) -> "Standardizer":
        logs = values.float().clamp_min(1e-12).log()
        return cls(logs.mean().item(), logs.std().clamp_min(1e-6).item())

    def __call__(self, values: Tensor) -> Tensor:
        return (values.float().clamp_min(1e-12).log() - self.mean) / self.std


class RestorationAE(AE):
    """``views``: 4 (rotations) or 8 (rotations and their mirror images) erase the orientation.
    ``score``: ``relative`` (squared error over the image's ink) or ``mse``, either averaged over
    the restorations of every view. ``neighbours``: with k > 0, ``fit_scorer`` keeps the normal
    training images' codes and the score adds the distance to the k nearest of them."""

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        views: int = 4,
        score: Literal["relative", "mse"] = "relative",
        neighbours: int = 0,
        **kwargs,
    ):
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if views not in VIEWS:
            raise ConfigError(f"RestorationAE: views must be 4 (rotations) or 8 (and mirrored), got {views}")
        if score not in ("relative", "mse"):
            raise ConfigError(f"RestorationAE: score must be relative or mse, got {score!r}")
        if neighbours < 0:
            raise ConfigError(f"RestorationAE: neighbours must be 0 (no memory) or more, got {neighbours}")
        self.views, self.score, self.neighbours = views, score, neighbours
        # set by fit_scorer: the normal codes, and the scale of each term on held-out normal images
        self.memory: Optional[Tensor] = None
        self.scales: Optional[tuple[Standardizer, Standardizer]] = None

    def corrupt(self, x: Tensor) -> Tensor:
        return random_views(x, self.views)

    def restorations(self, x: Tensor) -> list[Tensor]:
        """The restoration of every view of ``x``, in view order."""
        return [self.reconstruct(oriented(x, v)) for v in range(self.views)]

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(x, out)
        if not self.training:  # validation and test: every view restored, so the figure is not a draw
            restored = torch.stack(self.restorations(x))
            terms["loss"] = terms["restoration_mse"] = (restored.float() - x.float()).pow(2).mean()
        return terms

    @torch.no_grad()
    def error_and_codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per image, the error of the restorations of its views (``score``), averaged over them, and
        the codes of its views side by side, scaled to unit length; each view encoded once."""
        codes = [self.encode(oriented(x, v)) for v in range(self.views)]
        restored = [self.decode(code) for code in codes]
        if self.score == "relative":
            per_view = [relative_error(r, x) for r in restored]
        else:
            per_view = [(r.float() - x.float()).pow(2).flatten(1).mean(1) for r in restored]
        return torch.stack(per_view).mean(0), F.normalize(torch.cat([c.float() for c in codes], 1), dim=1)

    @torch.no_grad()
    def fit_scorer(self, normal: Tensor, held_out: Tensor, batch_size: int = 1000) -> None:
        """With ``neighbours``: remembers the codes of the ``normal`` training images and scales the
        two terms of the score by their logs' mean and spread over ``held_out`` normal images."""
        if not self.neighbours:
            return
        self.memory = torch.cat([self.error_and_codes(b)[1] for b in normal.split(batch_size)])
        scored = [self.error_and_codes(b) for b in held_out.split(batch_size)]
        error, codes = torch.cat([e for e, _ in scored]), torch.cat([c for _, c in scored])
        distance = nearest_distance(codes, self.memory, self.neighbours)
        self.scales = (Standardizer.fit(error), Standardizer.fit(distance))

    @property
    def anomaly_score_name(self) -> str:
        error = "relative restoration error" if self.score == "relative" else "restoration MSE"
        if self.neighbours:
            return f"{error} + distance to the {self.neighbours} nearest normal codes (logs scaled on validation)"
        return f"{error}, mean over views"

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        error, codes = self.error_and_codes(x)
        if self.memory is None:
            return error
        error_scale, distance_scale = self.scales
        distance = nearest_distance(codes, self.memory.to(x.device), self.neighbours)
        return error_scale(error) + distance_scale(distance)

    def preview(self, x: Tensor) -> list[tuple[str, Tensor]]:
        turned = oriented(x, 1)
        return [("input", x), ("turned", turned), ("restored", self.reconstruct(turned))]
