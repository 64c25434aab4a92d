"""What ``aelight anomaly`` (on MNIST or a folder) and ``aelight export`` share: the scorer without
learning, the name of a model's score and the threshold's percentile option."""

import argparse

import torch


class PixelNearestNeighbour:
    """The baseline without learning: an image's score is its Euclidean distance to the nearest of
    the normal training images, in raw pixels."""

    def fit_scorer(self, normal: torch.Tensor, held_out: torch.Tensor) -> None:
        self.normal = normal.flatten(1).float()

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.flatten(1).float(), self.normal).amin(1)


def score_name(model) -> str:
    if isinstance(model, PixelNearestNeighbour):
        return "distance to the nearest normal training image (raw pixels)"
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
