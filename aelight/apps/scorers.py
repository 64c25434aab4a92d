"""The anomaly scorer without learning, of ``aelight anomaly --baseline`` (on MNIST or a folder)."""

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

    @property
    def anomaly_score_name(self) -> str:
        images = "image" if self.k == 1 else f"{self.k} images"
        return f"mean {self.distance} distance to the nearest normal training {images} (pixels)"

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
