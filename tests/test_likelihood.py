"""Binarized MNIST, the importance-sampled log-likelihood and the IWAE objective."""

import math

import pytest
import torch

from aelight.components import MLP, MLPDecoder, MLPEncoder
from aelight.data import DeviceBatches, MNISTDataModule
from aelight.errors import ConfigError, DataError
from aelight.models import VAE, HierarchicalVAE


def tiny_vae(latent: int = 1, **kw) -> VAE:
    torch.manual_seed(0)
    return VAE(
        MLPEncoder(2 * latent, [16], image_shape=(1, 4, 4), final_activation=None, activation="tanh"),
        MLPDecoder(latent, [16], image_shape=(1, 4, 4), activation="tanh"),
        **kw,
    ).eval()


@pytest.fixture(scope="module")
def binary_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.full((64, 1, 4, 4), 0.4), generator=g)


@torch.no_grad()
def quadrature_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the integral of p(x|z) N(z; 0, 1) over a fine grid of the 1-D latent."""
    z = torch.linspace(-10, 10, 40001).unsqueeze(1)
    log_px_z = -model.reconstruction_nll(x.unsqueeze(1).expand(-1, len(z), -1, -1, -1).reshape(-1, 1, 4, 4),
                                         model.decoder(z).repeat(len(x), 1, 1, 1)).reshape(len(x), len(z))  # fmt: skip
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z.squeeze(1))
    return torch.logsumexp(log_px_z + log_prior, dim=1) + math.log(z[1, 0] - z[0, 0])


def test_importance_sampled_likelihood_matches_quadrature(binary_images):
    model = tiny_vae()
    x = binary_images[:6]
    exact = quadrature_log_px(model, x)
    torch.manual_seed(1)
    estimate = model.log_likelihood(x, samples=20000, chunk=3000)
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)


def test_estimate_never_exceeds_minus_elbo_and_improves_with_k(binary_images):
    model = tiny_vae(latent=2)
    x = binary_images
    torch.manual_seed(2)
    minus_elbo = -model.log_weights(x, 5000).mean(0).mean().item()  # -ELBO, estimated with many draws
    nll = {}
    for k in (1, 10, 100, 1000):
        torch.manual_seed(3)
        nll[k] = -torch.stack([model.log_likelihood(x, k, chunk=256) for _ in range(5)]).mean().item()
    assert nll[1] == pytest.approx(minus_elbo, abs=0.05)  # k = 1 is the ELBO itself
    assert minus_elbo >= nll[1000] - 1e-6
    assert nll[1] >= nll[10] >= nll[100] >= nll[1000]


def test_iwae_objective_is_a_tighter_bound(binary_images):
    model = tiny_vae(latent=2, iwae_samples=20)
    torch.manual_seed(4)
    terms = model.loss_terms(binary_images, model(binary_images))
    assert torch.equal(terms["loss"], -terms["iwae_bound"])
    assert terms["iwae_bound"] > terms["elbo"]
    terms["loss"].backward()  # trainable
    assert all(p.grad is not None for p in model.parameters())


def test_dynamic_binarisation_draws_anew_and_fixed_binarisation_is_seeded(tiny_data):
    dm = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, binarize=True)
    dm.setup("fit")
    test_a, test_b = dm.split_tensors("test")[0], dm.split_tensors("test")[0]
    assert torch.equal(test_a, test_b) and set(test_a.unique().tolist()) <= {0, 255}
    gray = dm.splits["train"].dataset.data[torch.as_tensor(dm.splits["train"].indices)]
    loader = DeviceBatches(gray, torch.zeros(len(gray)), batch_size=500, binarize=True)
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    assert abs(first.mean().item() - gray.float().mean().item() / 255) < 0.01  # Bernoulli(pixel) on average


def test_binarize_needs_the_device_path(tiny_data):
    with pytest.raises(DataError, match="device_resident"):
        MNISTDataModule(data_dir=str(tiny_data), binarize=True, device_resident=False)


def test_nll_command_on_tiny_data(tiny_data, tmp_path):
    import glob
    import json

    from aelight.commands import main as aelight

    aelight(
        ["fit", "--config=configs/likelihood/vae_iwae_arch.yaml", f"--data.data_dir={tiny_data}",
         "--data.download=false", "--data.val_size=100", "--trainer.max_epochs=1",
         "--trainer.enable_progress_bar=false", "--model.init_args.iwae_samples=5",
         f"--trainer.logger.init_args.save_dir={tmp_path}"]
    )  # fmt: skip
    (ckpt,) = glob.glob(str(tmp_path / "vae_binarized" / "version_0" / "checkpoints" / "best.ckpt"))
    aelight(
        [
            "nll",
            "--ckpt_path",
            ckpt,
            f"--data.data_dir={tiny_data}",
            "--data.val_size=100",
            "--device=cpu",
            "--samples=50",
        ]
    )
    report = json.loads(open(ckpt.replace("checkpoints/best.ckpt", "apps/nll/report.json")).read())
    assert report["test_images"] == 200 and 0 < report["test_nll_nats"] <= report["test_minus_elbo_nats"] + 1.0


# --- two stochastic layers ---------------------------------------------------------------------------


def tiny_hierarchical_vae(first: int = 1, second: int = 1, **kw) -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE(
        MLPEncoder(2 * first, [16], image_shape=(1, 4, 4), final_activation=None, activation="tanh"),
        MLPDecoder(first, [16], image_shape=(1, 4, 4), activation="tanh"),
        MLP(first, 2 * second, [8], activation="tanh"),
        MLP(second, 2 * first, [8], activation="tanh"),
        **kw,
    ).eval()


def test_two_layer_log_weights_are_the_densities_of_torch_distributions(binary_images):
    model, x = tiny_hierarchical_vae(first=3, second=2), binary_images[:5]
    torch.manual_seed(5)
    d = model.draws(x, 4)
    h1, h2 = d["h1"], d["h2"]
    with torch.no_grad():
        mu1, logvar1 = model.encoder(x).chunk(2, -1)
        mu2, logvar2 = model.top_encoder(h1).chunk(2, -1)
        prior_mu1, prior_logvar1 = model.top_decoder(h2).chunk(2, -1)
        logits = model.decoder(h1.reshape(-1, 3)).reshape(4, 5, -1)
    normal = torch.distributions.Normal
    log_q = normal(mu1, (0.5 * logvar1).exp()).log_prob(h1).sum(-1) + normal(mu2, (0.5 * logvar2).exp()).log_prob(
        h2
    ).sum(-1)
    log_prior = normal(prior_mu1, (0.5 * prior_logvar1).exp()).log_prob(h1).sum(-1) + normal(0.0, 1.0).log_prob(h2).sum(
        -1
    )
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1).expand(4, -1, -1)).sum(-1)
    torch.testing.assert_close(d["log_q"], log_q, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d["log_prior"], log_prior, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d["log_px"], log_px, rtol=1e-5, atol=1e-4)
    assert h1.shape == (4, 5, 3) and h2.shape == (4, 5, 2)
    assert not torch.equal(h1[0], h1[1])  # each draw its own


@torch.no_grad()
def quadrature_two_layer_log_px(model: HierarchicalVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log of the double integral of p(x|h1) p(h1|h2) N(h2; 0, 1) over a grid of the two
    1-D latents."""
    grid = torch.linspace(-8, 8, 1601)
    step = (grid[1] - grid[0]).item()
    logits = model.decoder(grid[:, None]).repeat(len(x), 1, 1, 1)
    log_px_h1 = -model.reconstruction_nll(x.repeat_interleave(len(grid), 0), logits).reshape(len(x), -1)
    mu, logvar = model.top_decoder(grid[:, None]).chunk(2, -1)  # p(h1 | h2) for each h2 of the grid
    normal = torch.distributions.Normal
    log_h1_h2 = normal(mu, (0.5 * logvar).exp()).log_prob(grid[None, :])  # (h2, h1)
    log_joint_latents = log_h1_h2 + normal(0.0, 1.0).log_prob(grid)[:, None]
    log_p_h1 = torch.logsumexp(log_joint_latents, 0) + math.log(step)  # p(h1), h2 integrated out
    return torch.logsumexp(log_px_h1 + log_p_h1[None], 1) + math.log(step)


def test_two_layer_importance_sampled_likelihood_matches_quadrature(binary_images):
    model, x = tiny_hierarchical_vae(), binary_images[:6]
    exact = quadrature_two_layer_log_px(model, x)
    torch.manual_seed(1)
    estimate = model.log_likelihood(x, samples=20000, chunk=4000)
    assert torch.allclose(estimate, exact, atol=0.03), (estimate, exact)
    torch.manual_seed(2)
    minus_elbo = -model.log_weights(x, 4000).mean(0)
    assert (minus_elbo > -exact + 0.01).all()  # the ELBO is a strict bound here: q is not the posterior


def test_two_layer_iwae_objective_is_a_tighter_bound_and_trains_every_network(binary_images):
    model = tiny_hierarchical_vae(first=2, second=2, iwae_samples=20).train()
    torch.manual_seed(4)
    terms = model.training_terms(binary_images)
    assert torch.equal(terms["loss"], -terms["iwae_bound"]) and terms["iwae_bound"] > terms["elbo"]
    terms["loss"].backward()
    for name in ("encoder", "decoder", "top_encoder", "top_decoder"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert model.eval().sample(7).shape == (7, 1, 4, 4)


def test_two_layer_networks_that_do_not_fit_are_named_with_their_fix():
    with pytest.raises(ConfigError, match="top_encoder.init_args.in_features to 2"):
        HierarchicalVAE(MLPEncoder(4, [8], image_shape=(1, 4, 4), final_activation=None),
                        MLPDecoder(2, [8], image_shape=(1, 4, 4)), MLP(3, 2), MLP(1, 4))  # fmt: skip
    with pytest.raises(ConfigError, match="top_decoder.init_args.in_features to 1 and out_features to 4"):
        HierarchicalVAE(MLPEncoder(4, [8], image_shape=(1, 4, 4), final_activation=None),
                        MLPDecoder(2, [8], image_shape=(1, 4, 4)), MLP(2, 2), MLP(1, 2))  # fmt: skip


def test_the_iwae_bound_with_many_samples_reaches_the_quadrature_log_likelihood(binary_images):
    # IWAE_K = E[log (1/K) sum_k w_k] rises to log p(x) as K grows; without its - log K it would
    # stand log K (8.3 nats here) above it, and still above the ELBO
    model = tiny_vae(iwae_samples=4000)
    x = binary_images[:16]
    torch.manual_seed(5)
    with torch.no_grad():
        bound = model.loss_terms(x, model(x))["iwae_bound"].item()
    exact = quadrature_log_px(model, x).mean().item()
    assert bound == pytest.approx(exact, abs=0.03) and bound <= exact + 0.01


def test_the_vae_anomaly_score_is_minus_the_elbo_by_torch_distributions(binary_images):
    # -ELBO = E_q[-log p(x|z)] + KL(q || N(0, I)): the KL must add; ``nll - kl`` would subtract it
    model = tiny_vae(latent=2)
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[:2] += 1.5  # a posterior mean away from the prior: a KL of nats, not hundredths
        x = binary_images[:8]
        mu, logvar = model.posterior(x)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
        torch.manual_seed(6)
        z = q.sample((4000,))
        logits = model.decoder(z.reshape(-1, 2)).reshape(4000, len(x), -1)
        nll = -torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(-1).mean(0)
        torch.manual_seed(7)
        score = model.anomaly_score(x, samples=4000)
    assert kl.min() > 1.0
    assert torch.allclose(score, nll + kl, atol=0.05), (score, nll + kl)
