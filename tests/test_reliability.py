"""Faults lose nothing and untrusted files run no code (issue: reliability and safety)."""

import glob
import os
import signal

import lightning as L
import pytest
import torch

from aelight.callbacks import FiniteLossGuard
from aelight.checkpoints.io import CheckpointError, SafeCheckpointIO
from aelight.commands import main
from aelight.data import MNISTDataModule
from aelight.errors import NonFiniteLossError
from aelight.models import AE
from aelight.training.engine import TrainingEngine
from tests.conftest import kill_inside_a_slow_save


def ckpts(tmp_path, name="ae"):
    return sorted(glob.glob(str(tmp_path / "logs" / name / "version_*" / "checkpoints" / "*.ckpt")))


def test_corrupt_and_truncated_checkpoints_are_named(cli_args, tmp_path, capsys):
    main(cli_args("fit", "--config=configs/ae.yaml"))
    last = [c for c in ckpts(tmp_path) if c.endswith("last.ckpt")][0]
    data = open(last, "rb").read()
    truncated, garbage = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"this is not a checkpoint" * 100)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    expected = {
        truncated: f"checkpoint {truncated} is truncated or corrupt",
        garbage: f"{garbage} is not a checkpoint (not a file written by torch.save)",
        empty: f"checkpoint {empty} is empty (0 bytes)",
    }
    for bad, message in expected.items():
        with pytest.raises(SystemExit) as exit_:
            main(cli_args("test", "--config=configs/ae.yaml", f"--ckpt_path={bad}"))
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert message in err and "pickled" not in err, err


class Payload:
    """Pickles into a call of Path.touch: loading it with plain pickle would create the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_payload_is_refused_and_runs_nothing(cli_args, tmp_path, capsys):
    main(cli_args("fit", "--config=configs/ae.yaml"))
    last = [c for c in ckpts(tmp_path) if c.endswith("last.ckpt")][0]
    checkpoint = torch.load(last, weights_only=True)
    marker = tmp_path / "marker"
    checkpoint["hyper_parameters"]["evil"] = Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    with pytest.raises(SystemExit) as exit_:
        main(cli_args("test", "--config=configs/ae.yaml", f"--ckpt_path={evil}"))
    assert exit_.value.code == 1
    assert "refused: it carries pickled Python objects" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        SafeCheckpointIO().load_checkpoint(evil, weights_only=True)
    assert not marker.exists()


def test_output_folder_not_writable_fails_before_training(cli_args, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = cli_args("fit", "--config=configs/ae.yaml") + [f"--trainer.logger.init_args.save_dir={blocker / 'logs'}"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"output folder {blocker / 'logs'} is not writable" in err
    assert "Epoch" not in err


def test_resume_at_epoch_boundary_gives_the_same_weights_as_an_uninterrupted_run(cli_args, tmp_path):
    # The VAE draws noise every step: this also checks that the RNG state travels in the checkpoint.
    base = ["--config=configs/vae.yaml", "--trainer.deterministic=true"]
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=straight", epochs=3))
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=resumed", epochs=1))
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=resumed", "--ckpt_path=last", epochs=3))
    straight = torch.load(ckpts(tmp_path, "straight")[-1], weights_only=True)["state_dict"]
    resumed = torch.load(ckpts(tmp_path, "resumed")[-1], weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_likelihood_run_resumed_mid_schedule_ends_as_an_uninterrupted_one(cli_args, tmp_path):
    # The likelihood configs train for more than one sitting: each training image is binarized anew
    # from the RNG every epoch, the IWAE bound draws K codes a step and the learning rate decays per
    # epoch, so all three must travel in the checkpoint for the resumed run to end where it would have.
    base = ["--config=configs/likelihood/hvae_iwae5.yaml", "--trainer.deterministic=true"]
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=straight", epochs=3))
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=resumed", epochs=2))
    main(cli_args("fit", *base, "--trainer.logger.init_args.name=resumed", "--ckpt_path=last", epochs=3))
    straight = torch.load(ckpts(tmp_path, "straight")[-1], weights_only=True)
    resumed = torch.load(ckpts(tmp_path, "resumed")[-1], weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2
    assert straight["lr_schedulers"] == resumed["lr_schedulers"]
    assert straight["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-3 * 0.998160**3)
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key in straight["state_dict"]:
        assert torch.equal(straight["state_dict"][key], resumed["state_dict"][key]), key


def test_sigkill_while_writing_a_checkpoint_leaves_no_corrupt_file_and_resume_completes(cli_args, tmp_path):
    args = cli_args("fit", "--config=configs/ae.yaml", epochs=4)
    folder = tmp_path / "logs" / "ae" / "version_0" / "checkpoints"
    # the two files of epoch 0 are written normally; killed while epoch 1's checkpoint is being written
    code = kill_inside_a_slow_save(args, tmp_path / "in_write", 2, caught=lambda: glob.glob(str(folder / ".*.tmp")))
    assert code == -signal.SIGKILL
    # what stands under a final name is whole: epoch 0's checkpoints; the torn file is a hidden temporary
    assert sorted(os.listdir(folder)) == sorted(
        ["best.ckpt", "last.ckpt", *[os.path.basename(p) for p in glob.glob(str(folder / ".*.tmp"))]]
    )
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(folder / "best.ckpt", weights_only=True)["epoch"] == 0
    # the command resumes from last (beside the torn temporary) and completes
    main(cli_args("fit", "--config=configs/ae.yaml", "--ckpt_path=last", epochs=4))
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 3


class SpikeAt(AE):
    """An AE whose extra term ``spike`` is infinite at one training step only (1-based)."""

    def __init__(self, bad_step: int, **kw):
        super().__init__(**kw)
        self.bad_step, self.calls = bad_step, 0

    def loss_terms(self, x, out):
        terms = super().loss_terms(x, out)
        if self.training:
            self.calls += 1
            terms["spike"] = torch.tensor(float("inf") if self.calls == self.bad_step else 0.0)
        return terms


@pytest.mark.parametrize("check_every_n_steps", [1, 6])
def test_nan_guard_sees_every_step_of_a_batch_not_only_its_last(tiny_data, check_every_n_steps):
    # Steps 1-4 form the first batch, 5-8 the second: step 6 is neither a batch's last step
    # nor a multiple of the batch's 4 steps, so a guard that watched only those would miss it.
    model = SpikeAt(bad_step=6)
    dm = MNISTDataModule(data_dir=str(tiny_data), download=False, val_size=100, batch_size=32, steps_per_batch=4)
    guard = FiniteLossGuard(check_every_n_steps=check_every_n_steps)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TrainingEngine(steps_per_batch=4), guard])  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 6 \(terms not finite: spike\)"):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 8  # stopped at the end of the batch holding the bad step
