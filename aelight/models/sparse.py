"""Sparse autoencoder: a penalty on the code so that only a few units are active."""

from typing import Literal, Optional

from torch import Tensor, nn

from aelight.errors import ConfigError
from aelight.models.autoencoder import AE


def kl_sparsity(code: Tensor, target: float) -> Tensor:
    """Sum over units of KL(Bernoulli(target) || Bernoulli(mean activation)), as in Ng's notes.

    Needs activations in [0, 1] (a sigmoid code).
    """
    rho_hat = code.float().mean(0).clamp(1e-6, 1 - 1e-6)
    rho = float(target)  # a Python scalar: a tensor made here would be a host-to-device copy in every step
    return (rho * (rho / rho_hat).log() + (1 - rho) * ((1 - rho) / (1 - rho_hat)).log()).sum()


class SparseAE(AE):
    """``penalty: l1`` adds ``weight * mean_batch(sum_units |z|)``; ``penalty: kl`` adds
    ``weight * sum_units KL(rho || rho_hat)`` (use an encoder with ``final_activation: sigmoid``).

    Also logs the mean code activation and the fraction of code entries above ``active_threshold``.
    """

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        penalty: Literal["l1", "kl"] = "l1",
        weight: float = 1e-4,
        target_activation: float = 0.05,
        active_threshold: float = 0.0,
        **kwargs,
    ):
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if penalty not in ("l1", "kl"):
            raise ConfigError(f"SparseAE: penalty must be 'l1' or 'kl', got {penalty!r}")
        if not 0 < target_activation < 1:
            raise ConfigError(
                f"SparseAE: target_activation must be between 0 and 1 (a mean unit activation), got {target_activation}"
            )
        if weight < 0:
            raise ConfigError(f"SparseAE: weight must be 0 or more, got {weight}")
        self.penalty, self.weight = penalty, weight
        self.target_activation, self.active_threshold = target_activation, active_threshold

    def sparsity_penalty(self, z: Tensor) -> Tensor:
        if self.penalty == "kl":
            return kl_sparsity(z, self.target_activation)
        return z.float().abs().sum(1).mean()

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(x, out)
        z = out["z"]
        terms["sparsity"] = self.sparsity_penalty(z)
        terms["loss"] = terms["loss"] + self.weight * terms["sparsity"]
        terms["mean_activation"] = z.detach().float().mean()
        terms["active_fraction"] = (z.detach() > self.active_threshold).float().mean()
        return terms
