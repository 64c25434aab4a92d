"""The attribute-restoration autoencoder: its views, its training input, its relative score."""

import numpy as np
import pytest
import torch

from aelight.components import ConvDecoder, ConvEncoder
from aelight.errors import ConfigError
from aelight.models import RestorationAE
from aelight.models.restoration import oriented, random_views, relative_error
from tests.conftest import synthetic_digits
from tests.test_models import train_steps


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images, _ = synthetic_digits(64, seed=5)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def test_the_eight_views_are_the_rotations_and_their_mirror_images():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = [oriented(x, v)[0, 0] for v in range(8)]
    assert torch.equal(views[0], x[0, 0])
    assert torch.equal(views[1], x[0, 0].T.flip(0))  # a quarter turn counter-clockwise
    assert torch.equal(oriented(oriented(x, 2), 2), x)
    assert torch.equal(views[4], x[0, 0].flip(1))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # all different for an asymmetric image
    images = torch.rand(2, 3, 5, 5)  # against torch.rot90, the operator the views stand for
    for v in range(8):
        expected = torch.rot90(images, v % 4, dims=(-2, -1))
        assert torch.equal(oriented(images, v), expected.flip(-1) if v >= 4 else expected)


def test_random_views_turn_each_image_by_its_own_draw():
    x = torch.rand(64, 1, 5, 5)
    seen = set()
    g = torch.Generator().manual_seed(0)
    out = random_views(x, 4, generator=g)
    for image, view in zip(x, out):
        matches = [v for v in range(4) if torch.equal(oriented(image[None], v)[0], view)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_relative_error_divides_the_squared_error_by_the_ink():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, :2] = 1.0  # 8 pixels of ink
    x[1, 0, 0, :2] = 0.5  # 1 of ink
    restored = x.clone()
    restored[:, 0, 3, 3] = 0.5  # one wrong pixel in each: squared error 0.25
    assert relative_error(restored, x).tolist() == pytest.approx([0.25 / 8, 0.25 / 1])


def small_model(views=4, score="relative"):
    return RestorationAE(ConvEncoder(16, channels=(8, 16)), ConvDecoder(16, channels=(16, 8)), views=views, score=score)


def test_training_restores_turned_images_and_evaluation_scores_every_view(batch):
    torch.manual_seed(0)
    model = small_model()
    before, after = train_steps(model, batch, steps=150)
    assert after < before / 2, (before, after)
    model.eval()
    with torch.no_grad():
        views = [(model.reconstruct(oriented(batch, v)) - batch).pow(2).mean() for v in range(4)]
        terms = model.loss_terms(batch, model(batch))
    assert terms["loss"] == pytest.approx(torch.stack(views).mean().item(), rel=1e-5)
    score = model.anomaly_score(batch)
    expected = torch.stack([relative_error(model.reconstruct(oriented(batch, v)), batch) for v in range(4)]).mean(0)
    assert torch.allclose(score, expected)
    mse = small_model(score="mse")
    mse.load_state_dict(model.state_dict())
    mse.eval()
    assert torch.allclose(mse.anomaly_score(batch), score * batch.flatten(1).sum(1) / 784, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [{"views": 3}, {"score": "ssim"}])
def test_unknown_views_or_score_is_one_line(kwargs):
    with pytest.raises(ConfigError):
        small_model(**kwargs)


def test_the_memory_score_adds_the_standardised_error_and_nearest_code_distance(batch):
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(0)
    model = RestorationAE(ConvEncoder(16, channels=(8, 16)), ConvDecoder(16, channels=(16, 8)), neighbours=3)
    model.eval()
    normal, held_out, queries = batch[:32], batch[32:48], batch[48:]
    model.fit_scorer(normal, held_out)

    def oracle_parts(x):  # each view encoded and decoded by hand, in float64
        with torch.no_grad():
            codes = [model.encode(oriented(x, v)) for v in range(4)]
            errors = torch.stack([relative_error(model.decode(c), x) for c in codes]).mean(0)
        joined = torch.cat(codes, 1).double().numpy()
        return errors.double().numpy(), joined / np.linalg.norm(joined, axis=1, keepdims=True)

    _, memory = oracle_parts(normal)
    knn = NearestNeighbors(n_neighbors=3).fit(memory)
    val_error, val_codes = oracle_parts(held_out)
    val_distance = knn.kneighbors(val_codes)[0].mean(1)
    error, codes = oracle_parts(queries)
    distance = knn.kneighbors(codes)[0].mean(1)

    def z(values, reference):
        return (np.log(values) - np.log(reference).mean()) / np.log(reference).std(ddof=1)

    expected = z(error, val_error) + z(distance, val_distance)
    assert np.allclose(model.anomaly_score(queries).numpy(), expected, atol=1e-3)
