"""UMAP's fuzzy neighbourhood graph of a dataset (McInnes, Healy & Melville 2018), in torch.

Exact k-nearest neighbours (chunked distance matrix, on whatever device the data is on), each
point's membership strengths ``exp(-(d - rho) / sigma)`` with ``sigma`` set so that they sum to
``log2(k)``, symmetrised with the fuzzy union ``a + b - a * b``. Used by :class:`aelight.models.UMAPAE`.
"""

import math

import torch
from torch import Tensor

from aelight.errors import ConfigError


def nearest_neighbors(x: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Distances and indices of each row's ``k`` nearest other rows (Euclidean), each ``N x k``."""
    x = x.flatten(1).float()
    if not 0 < k < len(x):
        raise ConfigError(
            f"n_neighbors must be between 1 and {len(x) - 1} for {len(x)} training images, got {k}; "
            "set model.init_args.n_neighbors lower"
        )
    squared = x.pow(2).sum(1)
    dists, indices = [], []
    for start in range(0, len(x), chunk):
        rows = x[start : start + chunk]
        d2 = squared[start : start + chunk, None] + squared[None] - 2 * rows @ x.T
        d2[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = float("inf")  # not itself
        values, index = d2.topk(k, dim=1, largest=False)
        dists.append(values.clamp_min(0).sqrt())
        indices.append(index)
    return torch.cat(dists), torch.cat(indices)


def membership_strengths(dists: Tensor, iterations: int = 64) -> Tensor:
    """``exp(-(d - rho) / sigma)`` per neighbour, ``rho`` the nearest distance, ``sigma`` found by
    bisection so that each row sums to ``log2(k)``."""
    excess = (dists - dists[:, :1]).clamp_min(0)
    target = math.log2(dists.shape[1])
    low = torch.zeros_like(dists[:, :1])
    high = torch.full_like(low, float("inf"))
    sigma = torch.ones_like(low)
    for _ in range(iterations):
        too_wide = torch.exp(-excess / sigma).sum(1, keepdim=True) > target
        high = torch.where(too_wide, sigma, high)
        low = torch.where(too_wide, low, sigma)
        sigma = torch.where(high.isinf(), sigma * 2, (low + high) / 2)
    return torch.exp(-excess / sigma)


def fuzzy_graph(x: Tensor, k: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Edges ``(heads, tails, weights)`` of the symmetric fuzzy k-NN graph of the rows of ``x``."""
    dists, indices = nearest_neighbors(x, k)
    n = len(x)
    heads = torch.arange(n, device=x.device).repeat_interleave(k)
    directed = torch.sparse_coo_tensor(
        torch.stack([heads, indices.flatten()]), membership_strengths(dists).flatten(), (n, n), check_invariants=False
    ).coalesce()
    reverse = directed.t().coalesce()
    union = (directed + reverse - directed * reverse).coalesce()
    keep = union.values() > 0
    return union.indices()[0][keep], union.indices()[1][keep], union.values()[keep]


def curve_parameters(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """``a, b`` such that ``1 / (1 + a d^(2b))`` fits UMAP's target similarity: 1 up to ``min_dist``,
    then ``exp(-(d - min_dist) / spread)``."""
    import numpy as np
    from scipy.optimize import curve_fit

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), d, target)
    return float(a), float(b)
