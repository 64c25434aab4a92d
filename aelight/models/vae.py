"""Variational autoencoder: a Gaussian posterior q(z|x), a standard normal prior, beta-weighted KL."""

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelight.components import MLPDecoder, MLPEncoder
from aelight.errors import ConfigError
from aelight.models.autoencoder import AE


class VAE(AE):
    """The encoder outputs ``2 * latent`` numbers: the posterior mean and log-variance.

    ``likelihood: bernoulli`` scores pixels with binary cross-entropy on the decoder's logits;
    ``gaussian`` with a Normal of std ``gaussian_std`` around the sigmoid output. Both are summed
    over pixels, so ``recon``, ``kl`` and ``elbo`` are logged per sample in nats.
    At evaluation, ``reconstruct`` and the metrics use the posterior mean.
    """

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        beta: float = 1.0,
        gaussian_std: float = 0.1,
        **kwargs,
    ):
        if encoder is None:
            encoder = MLPEncoder(out_features=64, hidden_dims=[512], final_activation=None)
        if decoder is None:
            decoder = MLPDecoder(in_features=encoder.out_features // 2, hidden_dims=[512])
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"VAE: likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if gaussian_std <= 0:
            raise ConfigError(f"VAE: gaussian_std must be positive, got {gaussian_std}")
        if encoder.out_features % 2:
            raise ConfigError("VAE: the encoder's out_features must be even (mean and log-variance)")
        self.likelihood, self.beta, self.gaussian_std = likelihood, beta, gaussian_std

    @property
    def latent_dim(self) -> int:
        return self.encoder.out_features // 2

    code_features = latent_dim

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation
        logits = self.decoder(z)
        out = {"z": z, "mu": mu, "logvar": logvar, "logits": logits, "recon": torch.sigmoid(logits)}
        if not self.training:
            out["recon"] = self.decode(mu)
        return out

    def reconstruction_nll(self, x: Tensor, logits: Tensor) -> Tensor:
        """-log p(x|z) per sample, summed over pixels."""
        x, logits = x.flatten(1).float(), logits.flatten(1).float()
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        var = self.gaussian_std**2
        sq = (x - torch.sigmoid(logits)) ** 2
        return (0.5 * sq / var + 0.5 * math.log(2 * math.pi * var)).sum(1)

    @staticmethod
    def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) per sample."""
        mu, logvar = mu.float(), logvar.float()
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        recon = self.reconstruction_nll(x, out["logits"]).mean()
        kl = self.kl_divergence(out["mu"], out["logvar"]).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl, "elbo": -(recon + kl)}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images decoded from prior draws z ~ N(0, I)."""
        return self.decode(torch.randn(n, self.latent_dim, device=self.device))

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, samples: int = 10) -> Tensor:
        """Per-image -ELBO in nats (averaged over ``samples`` posterior draws)."""
        mu, logvar = self.posterior(x)
        kl = self.kl_divergence(mu, logvar)
        nll = torch.stack(
            [
                self.reconstruction_nll(x, self.decoder(mu + torch.randn_like(mu) * (0.5 * logvar).exp()))
                for _ in range(samples)
            ]
        ).mean(0)
        return nll + kl
