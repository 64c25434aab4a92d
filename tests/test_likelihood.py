"""Binarized MNIST, the importance-sampled log-likelihood and the IWAE objective."""

import math

import pytest
import torch

from aelight.components import MLPDecoder, MLPEncoder
from aelight.data import DeviceBatches, MNISTDataModule
from aelight.errors import DataError
from aelight.models import VAE


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
