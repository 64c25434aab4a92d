"""The convolutional winner-take-all autoencoder: its two sparsity rules and its feature code."""

import pytest
import torch

from aelight.components import ConvMapDecoder, ConvMapEncoder
from aelight.models import WTAAE
from aelight.models.wta import lifetime_winners, spatial_winners
from tests.conftest import synthetic_digits
from tests.test_models import train_steps


def test_spatial_winners_keep_exactly_each_maps_maximum():
    maps = torch.rand(4, 3, 7, 7)
    values, positions = spatial_winners(maps)
    assert torch.equal(values, maps.flatten(2).amax(2))
    assert torch.equal(maps.flatten(2).gather(2, positions[..., None])[..., 0], values)


def test_lifetime_winners_keep_each_map_in_its_top_fraction_of_the_batch():
    peaks = torch.rand(20, 5)  # batch x maps, one value per map
    kept = lifetime_winners(peaks, rate=0.2) > 0  # 4 of 20 images per map
    assert (kept.sum(0) == 4).all()
    assert torch.equal(kept, peaks >= peaks.topk(4, dim=0).values[-1:])


@pytest.mark.parametrize("activation,channels", [("relu", 1), ("tanh", 2), (None, 1)])
def test_the_encoders_peaks_have_the_values_and_gradients_of_the_dense_maps_maximum(activation, channels):
    torch.manual_seed(0)
    encoder = ConvMapEncoder(16, kernel_size=5, activation=activation, image_shape=(channels, 12, 12))
    x = torch.rand(8, channels, 12, 12)
    weights = torch.randn(8, 16)
    values, positions = encoder.peaks(x)  # found without autograd, recomputed from the peaks' patches
    fast = torch.autograd.grad((values * weights).sum(), list(encoder.parameters()))
    dense_values, dense_positions = spatial_winners(encoder(x))  # autograd through the full maps: the oracle
    dense = torch.autograd.grad((dense_values * weights).sum(), list(encoder.parameters()))
    assert torch.allclose(values, dense_values, atol=1e-6)
    live = dense_values > 0  # where every value of a map is 0 after a ReLU, any position is its peak
    assert torch.equal(positions[live], dense_positions[live])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast, dense))
    stacked = ConvMapEncoder(16, hidden_channels=[4], kernel_size=3)  # more than one layer: the dense maps' maximum
    assert all(torch.equal(a, b) for a, b in zip(stacked.peaks(x[:, :1]), spatial_winners(stacked(x[:, :1]))))


@pytest.mark.parametrize("kernel,channels", [(11, 1), (5, 3)])
def test_painting_the_winners_is_the_transposed_convolution_of_the_sparse_maps(kernel, channels):
    torch.manual_seed(0)
    decoder = ConvMapDecoder(16, kernel_size=kernel, image_shape=(channels, 28, 28))
    values = torch.rand(6, 16) * (torch.rand(6, 16) < 0.3)  # most maps silent
    values.requires_grad_(True)
    positions = torch.randint(0, 28 * 28, (6, 16))  # corners and edges included, as the strokes are cut there
    positions[0, :4] = torch.tensor([0, 27, 28 * 27, 28 * 28 - 1])
    dense = torch.zeros(6, 16, 28 * 28).scatter(2, positions[..., None], values[..., None]).view(6, 16, 28, 28)
    reference = decoder(dense)  # torch's dense transposed convolution: the oracle
    painted = decoder.paint(values, positions, (28, 28))
    assert painted.shape == reference.shape == (6, channels, 28, 28)
    assert torch.allclose(painted, reference, atol=1e-6)
    weights = torch.rand_like(reference)  # and the gradients that train the kernels and the encoder
    grads = torch.autograd.grad((reference * weights).sum(), [values, decoder.net[0].weight])
    painted_grads = torch.autograd.grad((painted * weights).sum(), [values, decoder.net[0].weight])
    active = values.detach() != 0  # a silent map is zeroed before the decoder, so no gradient reaches it anyway
    assert torch.allclose(painted_grads[0][active], grads[0][active], atol=1e-5)
    assert torch.allclose(painted_grads[1], grads[1], atol=1e-5)


def test_lifetime_sparsity_per_batch_in_training_per_image_in_evaluation():
    torch.manual_seed(0)
    model = WTAAE(ConvMapEncoder(20, kernel_size=3), ConvMapDecoder(20, kernel_size=5), lifetime_sparsity=0.1)
    x = torch.rand(30, 1, 28, 28)
    model.train()
    active = model(x)["z"] > 0  # images x maps
    assert (active.sum(0) <= 3).all()  # each map wins in 10% of the batch
    model.eval()
    active = model(x)["z"] > 0
    assert (active.sum(1) == 2).all()  # each image keeps its 10% strongest maps
    peaks = spatial_winners(model.encoder(x))[0]
    assert torch.equal(active, peaks >= peaks.topk(2, dim=1).values[:, -1:])
    assert torch.equal(model(x)["z"][:5], model(x[:5])["z"])  # independent of the batch


def test_wta_learns_and_encodes_pooled_maps():
    torch.manual_seed(0)
    images, _ = synthetic_digits(32, seed=3)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    model = WTAAE(
        ConvMapEncoder(8), ConvMapDecoder(8), lifetime_sparsity=0.5, pool_size=6, pool_stride=4,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )  # fmt: skip
    model.decoder.set_output_bias(x.mean(0))  # as fit's setup does
    before, after = train_steps(model, x, steps=150)
    assert after < 0.65 * before, (before, after)  # a few winners per image: a coarse reconstruction
    code = model.encode(x)
    assert code.shape == (32, 8 * 6 * 6)
    assert torch.equal(code, torch.nn.functional.max_pool2d(model.encoder(x), 6, 4).flatten(1))
    assert model.reconstruct(x).shape == x.shape
