"""The convolutional winner-take-all autoencoder: its two sparsity rules and its feature code."""

import torch

from aelight.components import ConvMapDecoder, ConvMapEncoder
from aelight.models import WTAAE
from aelight.models.wta import lifetime_winners, spatial_winners
from tests.conftest import synthetic_digits
from tests.test_models import train_steps


def test_spatial_winners_keep_exactly_each_maps_maximum():
    maps = torch.rand(4, 3, 7, 7)
    sparse = spatial_winners(maps)
    assert ((sparse != 0).flatten(2).sum(2) == 1).all()
    assert torch.equal(sparse.flatten(2).amax(2), maps.flatten(2).amax(2))


def test_lifetime_winners_keep_each_map_in_its_top_fraction_of_the_batch():
    peaks = torch.rand(20, 5)  # batch x maps, one value per map
    maps = spatial_winners(peaks[:, :, None, None].expand(20, 5, 2, 2).clone())
    kept = lifetime_winners(maps, rate=0.2).flatten(2).amax(2) > 0  # 4 of 20 images per map
    assert (kept.sum(0) == 4).all()
    assert torch.equal(kept, peaks >= peaks.topk(4, dim=0).values[-1:])


def test_lifetime_sparsity_per_batch_in_training_per_image_in_evaluation():
    torch.manual_seed(0)
    model = WTAAE(ConvMapEncoder(20, kernel_size=3), ConvMapDecoder(20, kernel_size=5), lifetime_sparsity=0.1)
    x = torch.rand(30, 1, 28, 28)
    model.train()
    active = model(x)["z"].flatten(2).amax(2) > 0  # images x maps
    assert (active.sum(0) <= 3).all()  # each map wins in 10% of the batch
    model.eval()
    active = model(x)["z"].flatten(2).amax(2) > 0
    assert (active.sum(1) == 2).all()  # each image keeps its 10% strongest maps
    peaks = spatial_winners(model.encoder(x)).flatten(2).amax(2)
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
