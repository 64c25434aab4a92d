"""Variational autoencoder: a Gaussian posterior q(z|x), a standard normal prior, beta-weighted KL."""

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelight.errors import ConfigError
from aelight.models.autoencoder import AE, build_network

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# Gaussian densities written out: torch.distributions validates its arguments with a host sync,
# which a CUDA-graph capture of the training step cannot hold.
def normal_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return (-0.5 * (z - mu).pow(2) * torch.exp(-logvar) - 0.5 * logvar - HALF_LOG_2PI).sum(-1)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(-1)


def draw(mu: Tensor, logvar: Tensor) -> Tensor:
    """One reparameterised draw of N(mu, diag(exp(logvar)))."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class VAE(AE):
    """The encoder outputs ``2 * latent`` numbers: the posterior mean and log-variance.

    ``likelihood: bernoulli`` scores pixels with binary cross-entropy on the decoder's logits;
    ``gaussian`` with a Normal of std ``gaussian_std`` around the sigmoid output. Both are summed
    over pixels, so ``recon``, ``kl`` and ``elbo`` are logged per sample in nats.
    At evaluation, ``reconstruct`` and the metrics use the posterior mean.

    ``iwae_samples: K > 1`` trains on the importance-weighted bound of Burda et al. (K samples,
    ``beta`` does not apply) and logs it as ``iwae_bound``. ``test_nll_samples: k > 0`` adds
    ``test/nll``, the importance-sampled negative log-likelihood (see ``log_likelihood``).
    """

    @classmethod
    def default_networks(cls, encoder_out_features: Optional[int] = None) -> dict[str, dict]:
        """An MLP with one 512-unit layer each way and a 32-d latent (the encoder's 64 outputs are
        its mean and log-variance)."""
        return {
            "encoder": {
                "class_path": "aelight.components.MLPEncoder",
                "init_args": {"out_features": 64, "hidden_dims": [512], "final_activation": None},
            },
            "decoder": {
                "class_path": "aelight.components.MLPDecoder",
                "init_args": {"in_features": (encoder_out_features or 64) // 2, "hidden_dims": [512]},
            },
        }

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        beta: float = 1.0,
        gaussian_std: float = 0.1,
        iwae_samples: int = 1,
        test_nll_samples: int = 0,
        **kwargs,
    ):
        if encoder is None:
            encoder = build_network(self.default_networks()["encoder"])
        if encoder.out_features % 2 or encoder.out_features < 2:
            raise ConfigError(
                f"VAE: the encoder's out_features must be even and at least 2 (mean and log-variance of the "
                f"latent), got {encoder.out_features}; set encoder.init_args.out_features to twice the latent size"
            )
        if decoder is None:
            decoder = build_network(self.default_networks(encoder.out_features)["decoder"])
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"VAE: likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if gaussian_std <= 0:
            raise ConfigError(f"VAE: gaussian_std must be positive, got {gaussian_std}")
        if beta < 0:
            raise ConfigError(f"VAE: beta must be 0 or more (the weight of the KL term), got {beta}")
        if iwae_samples < 1 or test_nll_samples < 0:
            raise ConfigError("VAE: iwae_samples must be at least 1 and test_nll_samples at least 0")
        self.likelihood, self.beta, self.gaussian_std = likelihood, beta, gaussian_std
        self.iwae_samples, self.test_nll_samples = iwae_samples, test_nll_samples

    @property
    def latent_dim(self) -> int:
        return self.encoder.out_features // 2

    code_size = latent_dim

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.posterior(x)
        z = draw(mu, logvar)
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
        recon_nll = self.reconstruction_nll(x, out["logits"]).mean()
        kl = self.kl_divergence(out["mu"], out["logvar"]).mean()
        terms = {"loss": recon_nll + self.beta * kl, "recon_nll": recon_nll, "kl": kl, "elbo": -(recon_nll + kl)}
        # The squared error every variant reports, to compare with them (the terms above are nats).
        terms["recon_mse"] = F.mse_loss(out["recon"].float(), x.float())
        if self.iwae_samples > 1:
            log_w = self.log_weights(x, self.iwae_samples, (out["mu"], out["logvar"]))
            terms["iwae_bound"] = (torch.logsumexp(log_w, 0) - math.log(self.iwae_samples)).mean()
            terms["loss"] = -terms["iwae_bound"]
        return terms

    def log_weights(self, x: Tensor, k: int, posterior: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for k draws z_i ~ q(z | x): shape (k, batch)."""
        mu, logvar = posterior if posterior is not None else self.posterior(x)
        mu, std = mu.float(), (0.5 * logvar.float()).exp()
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + std * eps
        log_q = (-0.5 * eps.pow(2) - std.log() - HALF_LOG_2PI).sum(-1)  # N(z; mu, std), from its noise
        log_prior = standard_normal_log_density(z)
        logits = self.decoder(z.reshape(-1, z.shape[-1]))
        xs = x.unsqueeze(0).expand(k, *x.shape).reshape(-1, *x.shape[1:])
        log_px_z = -self.reconstruction_nll(xs, logits).reshape(k, -1)
        return log_px_z + log_prior - log_q

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, samples: int = 5000, chunk: int = 500) -> Tensor:
        """Importance-sampled log p(x) per image, in nats, with the encoder as proposal:
        log (1/k) sum_i p(x, z_i) / q(z_i | x), accumulated with logsumexp over chunks of draws
        so memory stays bounded (chunk x batch decoder outputs at a time)."""
        posterior = self.posterior(x)
        total = None
        for start in range(0, samples, chunk):
            part = torch.logsumexp(self.log_weights(x, min(chunk, samples - start), posterior), 0)
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(samples)

    def evaluate(self, x: Tensor, out: dict[str, Tensor], stage: str, batch_idx: int) -> None:
        if stage == "test" and self.test_nll_samples:
            nll = -self.log_likelihood(x, self.test_nll_samples).mean()
            self.log("test/nll", nll, batch_size=x.shape[0], sync_dist=True)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images decoded from prior draws z ~ N(0, I)."""
        return self.decode(torch.randn(n, self.latent_dim, device=self.device))

    anomaly_score_name = "-ELBO (nats)"

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, samples: int = 10) -> Tensor:
        """Per-image -ELBO in nats (averaged over ``samples`` posterior draws)."""
        mu, logvar = self.posterior(x)
        kl = self.kl_divergence(mu, logvar)
        nll = torch.stack([self.reconstruction_nll(x, self.decoder(draw(mu, logvar))) for _ in range(samples)]).mean(0)
        return nll + kl
