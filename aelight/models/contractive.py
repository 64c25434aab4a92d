"""Contractive autoencoder (Rifai et al. 2011): the reconstruction loss plus the squared Frobenius
norm of the encoder's Jacobian, so that the code changes little when the input moves off the data."""

from typing import Optional

import torch
from torch import Tensor, nn

from aelight.errors import ConfigError
from aelight.models.autoencoder import AE


def jacobian_frobenius_sq(encoder: nn.Module, x: Tensor) -> Tensor:
    """Batch mean of ``||d encoder(x) / dx||_F^2``, exact: one vector-Jacobian product per code unit,
    vectorised over the batch, and differentiable (its gradient trains the encoder)."""

    def code(sample: Tensor) -> Tensor:
        return encoder(sample.unsqueeze(0)).squeeze(0)

    jacobians = torch.func.vmap(torch.func.jacrev(code))(x)  # (batch, code units, *input shape)
    return jacobians.float().pow(2).flatten(1).sum(1).mean()


class ContractiveAE(AE):
    """``loss = recon_mse + contraction * ||J_f(x)||_F^2`` (both batch means); logs ``jacobian_norm_sq``."""

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        contraction: float = 0.001,
        **kwargs,
    ):
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if contraction < 0:
            raise ConfigError(f"ContractiveAE: contraction must be 0 or more (the penalty's weight), got {contraction}")
        self.contraction = contraction

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(x, out)
        terms["jacobian_norm_sq"] = jacobian_frobenius_sq(self.encoder, x)
        terms["loss"] = terms["loss"] + self.contraction * terms["jacobian_norm_sq"]
        return terms
