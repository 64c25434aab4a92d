"""What ``aelight anomaly`` (on MNIST or a folder) and ``aelight export`` share: the scorer without
learning, the name of a model's score and the threshold's percentile option."""

import argparse

import torch

DISTANCES = ("euclidean", "cosine")


class PixelNearestNeighbours:
    """The baseline without learning: an image's score is its mean distance to its ``k`` nearest
    normal training images, pixel by pixel (the pixels the data module serves: raw, or deskewed
    with ``--data.deskew true``). ``cosine``: one minus the cosine of the angle between the two
    images as vectors, so an image's brightness does not count, only its shape."""

    def __init__(self, distance: str = "euclidean", k: int = 1):
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance, self.k = distance, k

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).double()  # float64: a near-duplicate's distance is not lost to rounding
        return torch.nn.functional.normalize(x, dim=1) if self.distance == "cosine" else x

    def fit_scorer(self, normal: torch.Tensor, held_out: torch.Tensor) -> None:
        self.normal = self._vectors(normal)
        if self.k > len(self.normal):
            raise ValueError(f"k = {self.k} nearest images asked of {len(self.normal)} normal training images")

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        x = self._vectors(x)
        if self.distance == "cosine":
            distances = 1 - x @ self.normal.T
        else:
            distances = torch.cdist(x, self.normal)
        return distances.topk(self.k, dim=1, largest=False).values.mean(1)


BASELINES = ("knn", "pixel_nn")  # pixel_nn: the Euclidean 1-NN, the name of earlier releases


def baseline_scorer(name: str, distance=None, k=None) -> PixelNearestNeighbours:
    """The scorer of ``aelight anomaly --baseline NAME [--distance D] [--k K]``: ``knn`` (Euclidean,
    k = 1 unless told), or ``pixel_nn``, its Euclidean 1-NN case under the name of earlier releases."""
    if name == "pixel_nn":
        if distance not in (None, "euclidean") or k not in (None, 1):
            raise ValueError("--baseline pixel_nn is the Euclidean 1-NN; for another distance or k use --baseline knn")
        return PixelNearestNeighbours("euclidean", 1)
    return PixelNearestNeighbours(distance or "euclidean", k or 1)


def score_name(model) -> str:
    if isinstance(model, PixelNearestNeighbours):
        images = "image" if model.k == 1 else f"{model.k} images"
        return f"mean {model.distance} distance to the nearest normal training {images} (pixels)"
    if hasattr(model, "sample"):
        return "-ELBO (nats)"
    if getattr(model, "error_and_codes", None) is None:
        return "reconstruction MSE"
    error = "relative restoration error" if model.score == "relative" else "restoration MSE"
    if model.neighbours:
        return f"{error} + distance to the {model.neighbours} nearest normal codes (logs scaled on validation)"
    return f"{error}, mean over views"


def percentile(text: str) -> float:
    """argparse type: a number from 0 to 100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value}")
    return value
