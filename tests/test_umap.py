"""UMAP's fuzzy graph and the autoencoder that keeps it in its code."""

import math

import lightning as L
import pytest
import torch

from aelight.components import MLPDecoder, MLPEncoder, deskewed
from aelight.components.neighbor_graph import curve_parameters, fuzzy_graph, membership_strengths, nearest_neighbors
from aelight.data import MNISTDataModule
from aelight.data.pixels import to_float_images
from aelight.errors import ConfigError
from aelight.models import UMAPAE


def test_nearest_neighbors_match_brute_force():
    x = torch.randn(300, 12)
    dists, indices = nearest_neighbors(x, k=5, chunk=64)  # several chunks
    full = torch.cdist(x, x).fill_diagonal_(float("inf"))
    expected = full.topk(5, dim=1, largest=False)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(dists, expected.values, atol=1e-4, rtol=1e-4)


def test_too_many_neighbours_is_a_config_error():
    with pytest.raises(ConfigError, match="n_neighbors must be between 1 and 9 for 10 training images"):
        nearest_neighbors(torch.randn(10, 3), k=10)


def test_memberships_sum_to_log2_k_with_one_at_the_nearest():
    dists = torch.rand(50, 10).sort(1).values * 5
    w = membership_strengths(dists)
    torch.testing.assert_close(w.sum(1), torch.full((50,), math.log2(10)), atol=1e-4, rtol=0)
    assert torch.all(w[:, 0] == 1) and torch.all(w <= 1)


def test_fuzzy_graph_is_symmetric_with_the_fuzzy_union():
    x = torch.randn(100, 6)
    heads, tails, weights = fuzzy_graph(x, k=4)
    edge = {(int(h), int(t)): float(w) for h, t, w in zip(heads, tails, weights)}
    assert all(abs(edge[(t, h)] - w) < 1e-6 for (h, t), w in edge.items())
    assert all(0 < w <= 1 for w in edge.values()) and all(h != t for h, t in edge)
    assert len(edge) >= 100 * 4  # every directed k-NN edge is in the union


def test_curve_parameters_are_umaps():
    a, b = curve_parameters(min_dist=0.1)
    assert a == pytest.approx(1.577, abs=0.01) and b == pytest.approx(0.895, abs=0.01)  # umap-learn's values


def test_embedding_loss_pulls_graph_neighbours_together():
    """Three clusters: after training, edges of the graph are short compared with random pairs."""
    torch.manual_seed(0)
    centers = torch.rand(3, 1, 28, 28)
    images = ((centers.repeat_interleave(60, 0) + 0.3 * torch.rand(180, 1, 28, 28)).clamp(0, 1) * 255).to(torch.uint8)
    model = UMAPAE(MLPEncoder(2, [32], final_activation=None), MLPDecoder(2, [32]), n_neighbors=10)
    model.graph_images = images[:, 0]
    model.edges = fuzzy_graph(images.float() / 255, 10)
    heads, tails, _ = model.edges

    def edge_to_random_ratio() -> float:
        with torch.no_grad():
            z = model.encoder(images.float() / 255)
        edge = (z[heads] - z[tails]).norm(dim=1).mean()
        return float(edge / torch.cdist(z, z).mean())

    before = edge_to_random_ratio()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    x = images[:32].float() / 255
    for _ in range(200):
        opt.zero_grad()
        terms = model.loss_terms(x, model(x))
        assert set(terms) == {"loss", "recon_mse", "embedding"}
        terms["loss"].backward()
        opt.step()
    assert edge_to_random_ratio() < min(0.3, before / 2), before
    model.eval()
    assert "embedding" not in model.loss_terms(x, model(x))  # outside fit's validation: reconstruction only


def test_fit_builds_the_graph_and_validation_scores_the_whole_objective(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = UMAPAE(MLPEncoder(2, [32], final_activation=None), MLPDecoder(2, [32]), n_neighbors=5, embedding_weight=0.5)
    data = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, batch_size=50)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    heads, tails, _ = model.edges
    assert len(model.graph_images) == 500 and int(heads.max()) < 500 and int(tails.max()) < 500
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) == pytest.approx(float(metrics["val/recon_mse"] + 0.5 * metrics["val/embedding"]))
    first = float(metrics["val/embedding"])
    trainer.validate(model, data, verbose=False)  # the same seeded edges each time
    assert float(trainer.callback_metrics["val/embedding"]) == pytest.approx(first)


def test_a_deskewed_graph_is_built_on_deskewed_training_images(tiny_data, tmp_path):
    encoder, decoder = MLPEncoder(2, [32], final_activation=None), MLPDecoder(2, [32])
    model = UMAPAE(encoder, decoder, n_neighbors=5, graph_space="deskewed")
    data = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, batch_size=50)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    images = to_float_images(model.graph_images)
    for built, expected in zip(model.edges, fuzzy_graph(deskewed(images), 5)):
        assert torch.equal(built, expected)
    assert not torch.equal(model.edges[0], fuzzy_graph(images, 5)[0])  # not the raw pixels' graph
    with pytest.raises(ConfigError, match="graph_space must be 'pixels' or 'deskewed'"):
        UMAPAE(MLPEncoder(2, [32]), MLPDecoder(2, [32]), graph_space="moments")


def _graph_model(code: int, embedding_dims=None) -> UMAPAE:
    torch.manual_seed(0)
    images = (torch.rand(60, 28, 28) * 255).to(torch.uint8)
    model = UMAPAE(MLPEncoder(code, [32], final_activation=None), MLPDecoder(code, [32]), n_neighbors=5,
                   embedding_dims=embedding_dims)  # fmt: skip
    model.graph_images, model.edges = images, fuzzy_graph(images.float() / 255, 5)
    return model


def test_umaps_term_shapes_only_the_first_embedding_dims_numbers_of_the_code():
    model = _graph_model(code=6, embedding_dims=2)
    codes = []

    def keep_code(module, inputs, z):
        z.retain_grad()
        codes.append(z)

    model.encoder.register_forward_hook(keep_code)
    model.embedding_loss(16, torch.Generator().manual_seed(1)).backward()
    grad = codes[0].grad
    assert grad[:, :2].abs().sum() > 0 and torch.all(grad[:, 2:] == 0)
    # the term on the first two numbers is the whole-code term of an encoder that gives only those two
    whole = _graph_model(code=6)
    whole.encoder.load_state_dict(model.encoder.state_dict())
    sliced_forward = whole.encoder.forward
    whole.encoder.forward = lambda x: sliced_forward(x)[:, :2]
    expected = whole.embedding_loss(16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.embedding_loss(16, torch.Generator().manual_seed(1)), expected)


def test_embedding_dims_outside_the_code_is_a_config_error(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="embedding_dims must be at least 1"):
        UMAPAE(MLPEncoder(2, [32]), MLPDecoder(2, [32]), embedding_dims=0)
    model = UMAPAE(MLPEncoder(4, [32], final_activation=None), MLPDecoder(4, [32]), n_neighbors=5, embedding_dims=5)
    data = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, batch_size=50)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match="embedding_dims 5 is more than the code's 4 numbers"):
        trainer.fit(model, data)
