import pytest
import torch

from aelight.components import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from aelight.models import AE, VAE, DenoisingAE, SparseAE
from tests.conftest import synthetic_digits


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images, _ = synthetic_digits(64, seed=5)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def train_steps(model, x, steps: int) -> tuple[float, float]:
    """Loss before and after ``steps`` optimizer steps on one fixed batch."""
    torch.manual_seed(0)
    opt = model.configure_optimizers()
    model.train()

    def loss():
        return model.loss_terms(x, model(model.corrupt(x)))["loss"]

    with torch.no_grad():
        before = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    return before, after


VARIANTS = {
    "ae": lambda: AE(),
    "conv_ae": lambda: AE(ConvEncoder(16), ConvDecoder(16)),
    "denoising": lambda: DenoisingAE(noise="masking", noise_level=0.3),
    "sparse_l1": lambda: SparseAE(penalty="l1", weight=1e-4),
    "sparse_kl": lambda: SparseAE(MLPEncoder(64, final_activation="sigmoid"), MLPDecoder(64), penalty="kl", weight=0.1),
    "vae": lambda: VAE(),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_learns(name, batch):
    torch.manual_seed(0)
    before, after = train_steps(VARIANTS[name](), batch, steps=150)
    assert after < before / 2.5, (before, after)


def test_default_ae_is_the_seed_model():
    model = AE()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 784)]
    assert isinstance(model.encoder.net[-1], torch.nn.ReLU)
    assert isinstance(model.optimizer_factory(model.parameters()), torch.optim.Adam)
    out = model(torch.rand(4, 1, 28, 28))
    assert out["recon"].shape == (4, 1, 28, 28) and 0 <= out["recon"].min() and out["recon"].max() <= 1


def test_mismatched_code_size_is_reported():
    with pytest.raises(ValueError, match="decoder takes codes of size 16 but the encoder gives 32"):
        AE(MLPEncoder(32), MLPDecoder(16))


def test_vae_terms_sample_and_posterior_mean(batch):
    torch.manual_seed(0)
    model = VAE()
    out = model(batch)
    terms = model.loss_terms(batch, out)
    assert terms["kl"] >= 0 and torch.isfinite(terms["elbo"])
    assert torch.allclose(terms["elbo"], -(terms["recon_nll"] + terms["kl"]))
    per_sample_kl = VAE.kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5))
    assert torch.equal(per_sample_kl, torch.zeros(3))  # q = prior gives KL 0
    assert model.sample(7).shape == (7, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.reconstruct(batch), model.reconstruct(batch))  # posterior mean: no noise
        assert torch.allclose(model(batch)["recon"], model.reconstruct(batch))


def test_vae_gaussian_likelihood_and_beta(batch):
    model = VAE(likelihood="gaussian", beta=4.0)
    terms = model.loss_terms(batch, model(batch))
    assert torch.allclose(terms["loss"], terms["recon_nll"] + 4.0 * terms["kl"])


def test_denoising_corrupts_training_input_only_and_targets_stay_clean(batch):
    model = DenoisingAE(noise="gaussian", noise_level=0.5)
    seen = {}
    real_forward = model.forward
    real_loss_terms = model.loss_terms

    def spy_forward(x):
        seen["input"] = x
        return real_forward(x)

    def spy_loss_terms(x, out):
        seen["target"] = x
        return real_loss_terms(x, out)

    model.forward, model.loss_terms = spy_forward, spy_loss_terms
    model.training_step((batch, None), 0)
    assert not torch.equal(seen["input"], batch) and torch.equal(seen["target"], batch)
    assert seen["input"].min() >= 0 and seen["input"].max() <= 1
    model.eval()
    with torch.no_grad():
        model.validation_step((batch, None), 0)
    assert torch.equal(seen["input"], batch)  # plain reconstruction is judged on clean input
    # evaluation noise is fixed by the seed, so evaluations are comparable
    assert torch.equal(model.corrupt_for_eval(batch, 3), model.corrupt_for_eval(batch, 3))


@pytest.mark.parametrize("kind", ["gaussian", "masking", "salt_and_pepper"])
def test_corruptions_change_about_the_requested_amount(kind, batch):
    from aelight.components.corruption import corrupt

    x = torch.full((200, 1, 28, 28), 0.5)
    y = corrupt(x, kind, 0.3, torch.Generator().manual_seed(0))
    changed = (y != x).float().mean().item()
    assert y.min() >= 0 and y.max() <= 1
    assert changed > 0.95 if kind == "gaussian" else abs(changed - 0.3) < 0.02


def test_sparse_penalty_is_positive_and_lowers_code_activity(batch):
    def activity(weight: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = SparseAE(MLPEncoder(128), MLPDecoder(128), penalty="l1", weight=weight)
        train_steps(model, batch, steps=200)
        with torch.no_grad():
            terms = model.loss_terms(batch, model(batch))
        assert terms["sparsity"] > 0
        return terms["active_fraction"].item(), terms["mean_activation"].item()

    dense_active, dense_mean = activity(0.0)
    sparse_active, sparse_mean = activity(5e-4)
    assert sparse_mean < dense_mean / 2 and sparse_active < dense_active


def test_kl_sparsity_is_zero_at_target_and_positive_elsewhere():
    from aelight.models.sparse import kl_sparsity

    assert kl_sparsity(torch.full((10, 4), 0.05), 0.05).abs() < 1e-6
    assert kl_sparsity(torch.full((10, 4), 0.5), 0.05) > 0.5


def test_checkpoint_reload_reproduces_outputs_exactly(tmp_path, batch):
    import lightning as L

    torch.manual_seed(0)
    model = VAE(ConvEncoder(8), ConvDecoder(4))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = VAE.load_from_checkpoint(path, encoder=ConvEncoder(8), decoder=ConvDecoder(4), weights_only=True)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.reconstruct(batch), loaded.reconstruct(batch))


def test_output_bias_starts_the_decoder_at_the_mean_image():
    mean = torch.rand(1, 28, 28) * 0.8 + 0.1
    for decoder in (MLPDecoder(8, [16]), MLPDecoder(8)):
        decoder.net[-2].weight.data.zero_()  # so a code decodes to the bias alone
        decoder.set_output_bias(mean)
        assert torch.allclose(torch.sigmoid(decoder(torch.zeros(2, 8))), mean.expand(2, 1, 28, 28), atol=1e-5)
    conv = ConvDecoder(8)
    conv.set_output_bias(mean)
    assert torch.allclose(torch.sigmoid(conv.net[-1].bias), mean.mean().reshape(1), atol=1e-5)


def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_encoder_jacobian(batch):
    from aelight.models.contractive import jacobian_frobenius_sq

    torch.manual_seed(0)
    linear = MLPEncoder(out_features=8, final_activation=None)  # f(x) = W x + b: J = W everywhere
    assert torch.allclose(jacobian_frobenius_sq(linear, batch), linear.net[0].weight.pow(2).sum(), rtol=1e-5)
    sigmoid = MLPEncoder(out_features=8, final_activation="sigmoid")  # J = diag(h (1 - h)) W
    w = sigmoid.net[0].weight
    h = sigmoid(batch)
    closed_form = ((h * (1 - h)).pow(2) @ w.pow(2).sum(1)).mean()
    penalty = jacobian_frobenius_sq(sigmoid, batch)
    assert torch.allclose(penalty, closed_form, rtol=1e-5)
    # differentiable in the weights: the gradient of ||W||_F^2 is 2 W
    jacobian_frobenius_sq(linear, batch).backward()
    assert torch.allclose(linear.net[0].weight.grad, 2 * linear.net[0].weight, rtol=1e-5)


def test_contractive_ae_learns_and_contracts(batch):
    from aelight.models import ContractiveAE

    def model(contraction):
        torch.manual_seed(0)
        encoder = MLPEncoder(out_features=16, final_activation="sigmoid")
        return ContractiveAE(encoder, MLPDecoder(in_features=16), contraction=contraction)

    plain, contractive = model(0.0), model(0.1)
    before, after = train_steps(contractive, batch, 150)
    assert after < 0.7 * before
    train_steps(plain, batch, 150)
    with torch.no_grad():
        terms = contractive.loss_terms(batch, contractive(batch))
        plain_jacobian = plain.loss_terms(batch, plain(batch))["jacobian_norm_sq"]
    expected = (terms["recon_mse"] + 0.1 * terms["jacobian_norm_sq"]).item()
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["jacobian_norm_sq"] < 0.5 * plain_jacobian  # the penalty keeps the encoder flat around the data


def test_vae_kl_and_likelihoods_match_torch_distributions_on_random_inputs():
    """Against torch.distributions, written apart from the model's own formulas."""
    from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 8) * 2, torch.randn(16, 8)
    posterior = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros(8), torch.ones(8)), 1)
    torch.testing.assert_close(VAE.kl_divergence(mu, logvar), kl_divergence(posterior, prior))
    x, logits = torch.rand(16, 1, 28, 28), torch.randn(16, 1, 28, 28) * 3
    gaussian = VAE(likelihood="gaussian", gaussian_std=0.3)
    expected = -Independent(Normal(torch.sigmoid(logits).flatten(1), 0.3), 1).log_prob(x.flatten(1))
    torch.testing.assert_close(gaussian.reconstruction_nll(x, logits), expected)
    binary = (x > 0.5).float()
    expected = -Independent(Bernoulli(logits=logits.flatten(1)), 1).log_prob(binary.flatten(1))
    torch.testing.assert_close(VAE().reconstruction_nll(binary, logits), expected)
