"""GPU-only checks (``python -m pytest -m gpu``): CUDA-graph steps give the eager steps' results."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from aelight.data import MNISTDataModule
from aelight.models import AE, VAE
from aelight.run.trainer_cli import build_cli
from aelight.training.cuda_graph import GraphedStep
from aelight.training.engine import TrainingEngine
from tests.conftest import REPO
from tests.test_cli import CONFIGS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def seed_model_and_adam(lr=1e-3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 784)).cuda()
    return model, torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def step_fn(model, optimizer):
    def step(x):  # two optimizer steps on the two halves of x, as TrainingEngine._take_steps does
        losses = []
        for half in x.tensor_split(2):
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(torch.sigmoid(model(half)), half)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach()[None])
        return ["loss"], torch.stack(losses)

    return step


def test_graphed_steps_match_eager_steps_and_a_new_lr_gets_a_new_graph():
    data = torch.rand(40, 256, 784, device="cuda")
    eager_model, eager_opt = seed_model_and_adam()
    graph_model, graph_opt = seed_model_and_adam()
    graphed = GraphedStep(step_fn(graph_model, graph_opt), graph_opt)
    eager = step_fn(eager_model, eager_opt)
    losses = []
    for i, x in enumerate(data):
        if i == 20:  # as an LR scheduler would: the captured update has the old lr baked in
            for opt in (eager_opt, graph_opt):
                opt.param_groups[0]["lr"] = 3e-4
        names, values = graphed(x)
        assert values.shape == (2, 1)
        losses.append((values.flatten().tolist(), eager(x)[1].flatten().tolist()))
    assert names == ["loss"]
    assert len(graphed.graphs) == 2 and graphed.replays == 40 - 2 * 3  # 3 eager warm-up calls per graph
    for graph_losses, eager_losses in losses:
        for a, b in zip(graph_losses, eager_losses):
            assert abs(a - b) <= 1e-5 * abs(b) + 1e-7, losses
    for p, q in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_a_failed_capture_goes_on_eagerly_and_random_draws_still_work():
    model, optimizer = seed_model_and_adam()

    def step(x):  # a random draw (registers the generator with the capture), then a host sync
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(torch.sigmoid(model(x + 0.1 * torch.randn_like(x))), x)
        loss.backward()
        optimizer.step()
        assert loss.item() >= 0  # .item() cannot be captured
        return ["loss"], loss.detach()[None, None]

    failures = []
    graphed = GraphedStep(step, optimizer, warmup_calls=1, on_failure=failures.append)
    for _ in range(3):
        names, values = graphed(torch.rand(8, 784, device="cuda"))
    assert graphed.failed and graphed.replays == 0 and len(failures) == 1, failures
    assert torch.isfinite(values).all() and torch.isfinite(torch.randn(4, device="cuda")).all()


def fit(tmp_data, model, precision="32-true", epochs=2, engine=None):
    """Fit and test on the GPU with ``engine`` (default: 4 eager steps per Lightning batch)."""
    engine = engine or TrainingEngine(steps_per_batch=4)
    L.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(tmp_data), download=False, val_size=100, batch_size=32,
                         steps_per_batch=engine.steps_per_batch)  # fmt: skip
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[engine])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    return result, trainer.global_step


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cuda_graph_fit_matches_the_eager_fit(tiny_data, precision):
    torch.manual_seed(0)
    engine = TrainingEngine(steps_per_batch=4, cuda_graph=True)
    graphed, steps = fit(tiny_data, AE(), precision, engine=engine)
    torch.manual_seed(0)
    eager, eager_steps = fit(tiny_data, AE(), precision)
    assert engine.graphed_step is not None and engine.graphed_step.replays > 0
    assert steps == eager_steps == 2 * 16
    assert abs(graphed["test/mse"] - eager["test/mse"]) <= 0.01 * eager["test/mse"], (graphed, eager)


def test_cuda_graph_vae_with_random_draws_trains(tiny_data):
    torch.manual_seed(0)
    engine = TrainingEngine(steps_per_batch=4, cuda_graph=True)
    result, _ = fit(tiny_data, VAE(), "bf16-mixed", epochs=3, engine=engine)
    torch.manual_seed(0)
    eager, _ = fit(tiny_data, VAE(), "bf16-mixed", epochs=3)
    assert engine.graphed_step.replays > 0 and not engine.graphed_step.failed
    # fresh noise each replay (the graph advances the generator), so close but not equal
    assert abs(result["test/loss"] - eager["test/loss"]) <= 0.05 * abs(eager["test/loss"]), (result, eager)


def test_a_resumed_adam_state_moves_its_step_count_to_the_device():
    model, _ = seed_model_and_adam()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # not fused: its step count lives on the host
    step_fn(model, optimizer)(torch.rand(8, 784, device="cuda"))
    assert all(s["step"].device.type == "cpu" for s in optimizer.state.values())
    graphed = GraphedStep(step_fn(model, optimizer), optimizer, warmup_calls=1)
    assert all(s["step"].device.type == "cuda" for s in optimizer.state.values())
    for _ in range(3):
        names, values = graphed(torch.rand(8, 784, device="cuda"))
    assert graphed.replays == 2 and not graphed.failed and torch.isfinite(values).all()


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_trains_through_cuda_graphs_with_the_gpu_config(config, tiny_data, tmp_path):
    # configs/trainer/gpu_bf16.yaml turns engine.cuda_graph on for whatever model it is combined with:
    # every shipped model's step must capture (no host sync in it) and train to finite losses.
    cli = build_cli(
        [f"--config=configs/{config}", "--config=configs/trainer/gpu_bf16.yaml", f"--data.data_dir={tiny_data}",
         "--data.download=false", "--data.val_size=100", "--data.batch_size=8", "--data.eval_batch_size=50",
         "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (engine,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TrainingEngine)]
    graphed = engine.graphed_step
    assert graphed is not None and not graphed.failed and graphed.replays > 0
    # 500 training images: 7 Lightning batches of 8 steps x 8 images, then 8 steps on 52. With 7 full
    # batches an epoch, a model whose scheduler changes the lr each epoch still captures (3 warm-up calls).
    assert cli.trainer.global_step == 2 * 64
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values()), result


def time_fit(*args: str) -> dict:
    """scripts/time_fit.py in its own process (DDP's process group does not outlive it)."""
    proc = subprocess.run(
        [sys.executable, "scripts/time_fit.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "capture of the training step failed" not in proc.stderr, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_ddp_replays_cuda_graphs_with_the_results_of_eager_ddp_at_world_size_one(tiny_data, tmp_path):
    common = ["-c", "configs/ae.yaml", "-c", "configs/trainer/ddp.yaml", "--trainer.devices=1",
              f"--data.data_dir={tiny_data}", "--data.val_size=100", "--data.batch_size=8",
              "--data.eval_batch_size=50", "--trainer.max_epochs=3", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--seed_everything=0"]  # fmt: skip
    graphed = time_fit(*common)  # ddp.yaml turns the graphs on
    eager = time_fit(*common, "--engine.cuda_graph=false")
    assert graphed["world_size"] == eager["world_size"] == 1
    # 500 images: 8 Lightning batches of 8 steps an epoch; DDP's first 10 iterations run eagerly,
    # then the 7 full batches of each epoch replay one graph (the short last one stays eager).
    assert graphed["cuda_graph_replays"] >= 7 and eager["cuda_graph_replays"] == 0
    assert graphed["global_step"] == eager["global_step"] == 3 * 64
    mse, eager_mse = graphed["test"]["test/mse"], eager["test"]["test/mse"]
    assert abs(mse - eager_mse) <= 0.01 * eager_mse, (graphed["test"], eager["test"])
