"""The fast training path: device-resident batches, several optimizer steps per Lightning batch,
and the benchmark script. No timing assertions: speed is measured by scripts/bench.py."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch

from aelight.components import ConvDecoder, ConvEncoder
from aelight.components.corruption import corrupt
from aelight.data import MNISTDataModule
from aelight.models import AE, DenoisingAE
from aelight.training.engine import TrainingEngine
from tests.conftest import REPO


def fit_and_test(tiny_data, model, epochs=3, engine=None, precision="32-true", **data_kw) -> tuple[float, int]:
    """Fit then test; with a TrainingEngine, the data module serves its steps_per_batch batches at once."""
    L.seed_everything(0)
    steps = engine.steps_per_batch if engine is not None else 1
    dm = MNISTDataModule(
        data_dir=str(tiny_data), download=False, val_size=100, batch_size=32, steps_per_batch=steps, **data_kw
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[engine] if engine is not None else [],
    )
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    return result["test/mse"], trainer.global_step


def test_fast_and_standard_paths_agree_within_noise(tiny_data):
    torch.manual_seed(0)  # the same initial weights for both: only the data path differs
    fast, fast_steps = fit_and_test(tiny_data, AE(), device_resident=True)
    torch.manual_seed(0)
    standard, standard_steps = fit_and_test(tiny_data, AE(), device_resident=False)
    assert fast_steps == standard_steps == 3 * 16  # 500 samples in batches of 32
    assert abs(fast - standard) / standard < 0.15, (fast, standard)


def test_several_steps_per_lightning_batch_take_the_same_optimizer_steps(tiny_data):
    one, steps_one = fit_and_test(tiny_data, AE(), engine=TrainingEngine(steps_per_batch=1))
    four, steps_four = fit_and_test(tiny_data, AE(), engine=TrainingEngine(steps_per_batch=4))
    assert steps_one == 3 * 16 and steps_four == 3 * 4 * 4  # 4 Lightning batches of 4 x 32 (last: 116 in 4)
    assert abs(one - four) / one < 0.15, (one, four)


def test_manual_steps_stop_on_a_bad_setting():
    from aelight.errors import ConfigError

    with pytest.raises(ConfigError, match="steps_per_batch"):
        TrainingEngine(steps_per_batch=0)
    with pytest.raises(ConfigError, match="steps_per_batch"):
        MNISTDataModule(steps_per_batch=0)


@pytest.mark.parametrize("kind", ["gaussian", "masking", "salt_and_pepper"])
def test_corruption_happens_on_the_batch_device(kind):
    # The meta device has no data: any hidden copy to the CPU would fail or come back on the CPU.
    x = torch.empty(8, 1, 28, 28, device="meta")
    assert corrupt(x, kind, 0.3).device.type == "meta"


def test_denoising_training_noise_is_made_on_the_batch_device():
    model = DenoisingAE()
    assert model.corrupt(torch.empty(4, 1, 28, 28, device="meta")).device.type == "meta"


@pytest.mark.slow  # a benchmark script's smoke run
def test_benchmark_script_runs_end_to_end_on_tiny_data(tiny_data):
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            f"--data-dir={tiny_data}",
            "--epochs=2",
            "--val-size=100",
            "--accelerator=cpu",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert len(report["epochs"]) == 2 and report["device"].startswith("cpu")
    for row in report["epochs"]:
        assert row["reference_s"] > 0 and row["aelight_s"] > 0
        assert row["speedup_epoch_time"] == pytest.approx(row["reference_s"] / row["aelight_s"])
        assert 0 < row["aelight_test_mse"] < 0.2
        assert row["reference_test_mse"] > row["aelight_test_mse"]  # the reference loop's [-1, 1] bug costs it


def test_compiled_step_matches_the_eager_step_and_keeps_checkpoint_names(tiny_data):
    torch.manual_seed(0)
    compiled, engine = AE(), TrainingEngine(compile_step=True)
    names = set(compiled.state_dict())
    mse, steps = fit_and_test(tiny_data, compiled, epochs=1, engine=engine)
    assert engine._terms_fn is not compiled.training_terms  # fit trained through torch.compile
    torch.manual_seed(0)
    eager_mse, _ = fit_and_test(tiny_data, AE(), epochs=1)
    assert steps == 16 and abs(mse - eager_mse) / eager_mse < 0.002, (mse, eager_mse)  # same start, same math
    assert set(compiled.state_dict()) == names  # checkpoints load into plain models


def conv_ae() -> AE:
    return AE(ConvEncoder(16, [8, 16]), ConvDecoder(16, [16, 8]))


def test_channels_last_steps_match_the_default_layout_and_keep_checkpoints_loadable(tiny_data):
    runs = {}
    for layout in (True, False):
        torch.manual_seed(0)
        model, engine = conv_ae(), TrainingEngine(steps_per_batch=4, channels_last=layout)
        runs[layout] = (model, *fit_and_test(tiny_data, model, epochs=1, engine=engine), engine)
    fast, slow = runs[True], runs[False]
    assert fast[3].layout == torch.channels_last and slow[3].layout is None
    conv = fast[0].encoder.net[2].weight  # 8 -> 16 channels (one input channel fits both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()  # trained in it
    assert fast[2] == slow[2] == 16 and abs(fast[1] - slow[1]) / slow[1] < 0.002, (fast[1], slow[1])  # same math
    plain = conv_ae()
    plain.load_state_dict(fast[0].state_dict())  # a checkpoint loads into the default layout
    for name, value in plain.state_dict().items():
        assert torch.equal(value, fast[0].state_dict()[name]) and value.is_contiguous(), name


def test_bf16_mixed_on_the_cpu_runs_convolutions_in_bfloat16_with_float32_weights_and_learns_alike(tiny_data):
    # configs/trainer/cpu_bf16.yaml: autocast on the CPU, through the engine's direct channels-last steps
    seen, mse = [], {}
    for precision in ("bf16-mixed", "32-true"):
        torch.manual_seed(0)
        model = conv_ae()
        hook = model.encoder.net[0].register_forward_hook(lambda m, i, out: seen.append((precision, out.dtype)))
        mse[precision], steps = fit_and_test(tiny_data, model, epochs=1, engine=TrainingEngine(4), precision=precision)
        hook.remove()
        assert steps == 16 and all(p.dtype == torch.float32 for p in model.parameters()), precision
    assert {dtype for p, dtype in seen if p == "bf16-mixed"} == {torch.bfloat16}
    assert {dtype for p, dtype in seen if p == "32-true"} == {torch.float32}
    assert abs(mse["bf16-mixed"] - mse["32-true"]) / mse["32-true"] < 0.03, mse


def test_channels_last_is_on_by_default_for_convolutions_on_the_cpu_only(tiny_data):
    for model, expected in ((conv_ae(), torch.channels_last), (AE(), None)):
        engine = TrainingEngine(steps_per_batch=2)
        fit_and_test(tiny_data, model, epochs=1, engine=engine)
        assert engine.layout == expected, type(model.encoder).__name__


class StepHooks(L.Callback):
    """Listens to the hooks around a step: the model must then go through Lightning's step path."""

    def __init__(self):
        self.backward_calls = self.optimizer_step_calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.backward_calls += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.optimizer_step_calls += 1


def test_direct_steps_only_where_no_hook_listens_with_the_same_result_and_step_count(tiny_data):
    weights, direct, steps = {}, {}, {}
    hooks = StepHooks()
    for name, callbacks in (("direct", []), ("hooked", [hooks])):
        torch.manual_seed(0)
        model, engine = AE(), TrainingEngine(steps_per_batch=4)
        L.seed_everything(0)
        dm = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, batch_size=32, steps_per_batch=4)
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[engine, *callbacks])  # fmt: skip
        trainer.fit(model, datamodule=dm)
        weights[name], direct[name], steps[name] = model.state_dict(), engine.direct_steps, trainer.global_step
    assert direct == {"direct": True, "hooked": False}
    assert steps == {"direct": 16, "hooked": 16}  # direct steps are counted like Lightning's
    assert hooks.backward_calls == hooks.optimizer_step_calls == 16  # every step reached the hooks
    assert all(torch.equal(weights["direct"][k], v) for k, v in weights["hooked"].items())


def test_training_loss_logged_per_epoch_is_the_mean_over_every_step(tiny_data):
    class Recorder(AE):
        def training_terms(self, x):
            terms = super().training_terms(x)
            self.seen.append((terms["loss"].item(), len(x)))
            return terms

    model = Recorder()
    model.seen = []
    dm = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=99, batch_size=32, steps_per_batch=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TrainingEngine(steps_per_batch=4)])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 16 and sorted({n for _, n in model.seen}) == [29, 30, 32]  # last batch: 117 in 4
    mean = sum(loss * n for loss, n in model.seen) / sum(n for _, n in model.seen)
    assert abs(trainer.callback_metrics["train/loss_epoch"].item() - mean) < 1e-6


def test_cuda_graph_option_without_a_gpu_warns_and_trains_as_without_it(tiny_data):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="cuda_graph: true needs CUDA devices"):
        graphed, steps = fit_and_test(tiny_data, AE(), engine=TrainingEngine(steps_per_batch=4, cuda_graph=True))
    torch.manual_seed(0)
    eager, _ = fit_and_test(tiny_data, AE(), engine=TrainingEngine(steps_per_batch=4))
    assert steps == 3 * 4 * 4 and graphed == eager


def test_cuda_graph_key_changes_with_what_a_captured_step_bakes_in():
    from aelight.training.cuda_graph import GraphedStep

    model = torch.nn.Linear(4, 4)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    graphed = GraphedStep(lambda x: {}, adam)
    assert adam.param_groups[0]["capturable"]  # Adam's update then keeps its step count on the device
    x = torch.zeros(8, 4)
    first = graphed.key(x)
    assert graphed.key(x.clone()) == first and graphed.key(torch.zeros(7, 4)) != first
    adam.param_groups[0]["lr"] = 5e-4  # an LR scheduler's new rate needs a new graph
    assert graphed.key(x) != first
    adam.param_groups[0]["lr"] = 1e-3
    assert graphed.key(x) == first


def test_cuda_graph_capture_waits_for_its_warm_up_calls_and_for_ready():
    # Under DDP the engine's ready() holds capture back until DDP's timed iterations are over.
    from aelight.training.cuda_graph import GraphedStep

    model = torch.nn.Linear(4, 4)
    batches, captured_at, eager_calls = [0], [], []
    graphed = GraphedStep(
        lambda x: eager_calls.append(batches[0]) or (["loss"], x[:1]),
        torch.optim.SGD(model.parameters(), lr=0.1),
        warmup_calls=3,
        ready=lambda: batches[0] > 10,
    )
    graphed._capture = lambda key, x: captured_at.append(batches[0]) or (["loss"], x[:1])  # no CUDA here
    for _ in range(11):
        batches[0] += 1
        graphed._step(torch.zeros(8, 4))
    assert eager_calls == list(range(1, 11)) and captured_at == [11]
    # a new key (a short batch) after that still gets its own warm-up calls
    for _ in range(4):
        batches[0] += 1
        graphed._step(torch.zeros(5, 4))
    assert eager_calls[10:] == [12, 13, 14] and captured_at == [11, 15]
