"""Deskewing: sheared strokes stand upright and centred, checked on moments computed apart in numpy."""

import numpy as np
import torch

from aelight.components import Deskewed, MLPEncoder, deskewed


def moments(image: np.ndarray) -> tuple[float, float, float]:
    """Centre of mass (x, y) and skew cov(x, y) / var(y) of one image, in numpy."""
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    mass = image.sum()
    cx, cy = (image * xs).sum() / mass, (image * ys).sum() / mass
    return cx, cy, (image * (xs - cx) * (ys - cy)).sum() / (image * (ys - cy) ** 2).sum()


def slanted_bar(slant: float, shift: float, size: int = 28) -> np.ndarray:
    """A soft stroke x = 12 + shift + slant (y - 13.5) for rows 4..23: a slanted digit one."""
    ys, xs = np.mgrid[:size, :size]
    centre = 12 + shift + slant * (ys - 13.5)
    return np.exp(-((xs - centre) ** 2) / 2.0) * ((ys >= 4) & (ys <= 23))


def test_a_slanted_stroke_comes_out_upright_and_centred():
    images = np.stack([slanted_bar(0.4, -3), slanted_bar(-0.3, 2), slanted_bar(0.0, 0)])
    assert abs(moments(images[0])[2] - 0.4) < 0.02  # the oracle sees the slant that was drawn
    out = deskewed(torch.tensor(images, dtype=torch.float32)[:, None]).numpy()[:, 0]
    assert out.shape == images.shape
    for image in out:
        cx, cy, skew = moments(image)
        assert abs(skew) < 0.03 and abs(cx - 13.5) < 0.3 and abs(cy - 13.5) < 0.3
    # nothing lost but the interpolation's blur: the stroke's mass stays
    np.testing.assert_allclose(out.sum((1, 2)), images.sum((1, 2)), rtol=0.03)


def test_an_upright_centred_image_is_left_as_it_is_and_a_blank_one_stays_blank():
    image = np.zeros((28, 28), np.float32)
    image[6:22, 12:16] = 1.0  # centre of mass (13.5, 13.5), no skew
    out = deskewed(torch.tensor(np.stack([image, np.zeros_like(image)]))).numpy()
    np.testing.assert_allclose(out[0], image, atol=1e-5)
    assert np.all(out[1] == 0) and np.isfinite(out).all()


def test_deskewed_network_reads_deskewed_images_and_keeps_the_feature_contract():
    encoder = MLPEncoder(2, [16], final_activation=None)
    wrapped = Deskewed(encoder)
    x = torch.tensor(np.stack([slanted_bar(0.4, -3), slanted_bar(0.0, 0)]), dtype=torch.float32)[:, None]
    assert wrapped.out_features == 2 and len(list(wrapped.parameters())) == len(list(encoder.parameters()))
    torch.testing.assert_close(wrapped(x), encoder(deskewed(x)))
    assert not torch.allclose(wrapped(x), encoder(x))
