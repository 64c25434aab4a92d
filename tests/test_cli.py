"""The ``aelight`` command, run in-process through its entry point on tiny data."""

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aelight.commands import main
from tests.conftest import REPO

# the experiment configs on MNIST (configs/folder_anomaly.yaml reads a folder: tests/test_folder.py runs it)
CONFIGS = sorted(
    str(p.relative_to(REPO / "configs"))
    for p in (REPO / "configs").rglob("*.yaml")
    if p.parent.name not in ("trainer", "sweeps") and "ImageFolderDataModule" not in p.read_text()
)
TRAINER_CONFIGS = sorted(p.name for p in (REPO / "configs" / "trainer").glob("*.yaml"))


def run(args: list[str]) -> None:
    main(args)


def checkpoints(tmp_path: Path, name: str) -> list[str]:
    return sorted(glob.glob(str(tmp_path / "logs" / name / "version_*" / "checkpoints" / "*.ckpt")))


def test_configs_folder_has_every_variant():
    assert {"ae.yaml", "denoising.yaml", "sparse_l1.yaml", "sparse_kl.yaml", "vae.yaml", "conv_ae.yaml"} <= set(CONFIGS)
    assert {"apps/ae_2d.yaml", "apps/umap_2d.yaml", "apps/wta_features.yaml", "anomaly/ae.yaml"} <= set(CONFIGS)
    assert {"cpu.yaml", "cpu_bf16.yaml", "gpu_bf16.yaml", "ddp.yaml", "ddp_sim.yaml"} <= set(TRAINER_CONFIGS)


# configs whose model, networks and data a sibling config or test of the default suite already runs
# (wider, deeper, deskewed or 2-D versions; the UMAP AE's fit in tests/test_umap.py; the one-layer
# IWAE's in tests/test_likelihood.py, its scheduler in likelihood/hvae_iwae5.yaml): run with -m slow
SIBLING_COVERED = {"apps/wta_wide_features.yaml", "apps/wta_deskew_features.yaml", "apps/conv_dae_features.yaml",
                   "apps/umap_2d_deskew.yaml", "apps/umap_2d.yaml", "apps/vae_2d.yaml", "apps/conv_ae_deep.yaml",
                   "likelihood/vae_iwae5_finetune.yaml", "likelihood/vae_iwae_arch.yaml",
                   "likelihood/vae_iwae5.yaml"}  # fmt: skip


@pytest.mark.parametrize(
    "config", [pytest.param(c, marks=pytest.mark.slow) if c in SIBLING_COVERED else c for c in CONFIGS]
)
def test_every_config_fits_then_tests_from_its_checkpoint(config, cli_args, tmp_path):
    name = config.removesuffix(".yaml").replace("/", "_")
    log_name = f"--trainer.logger.init_args.name={name}"
    run(cli_args("fit", f"--config=configs/{config}", log_name))
    ckpts = checkpoints(tmp_path, name)
    assert [os.path.basename(c) for c in ckpts] == ["best.ckpt", "last.ckpt"]
    run(cli_args("test", f"--config=configs/{config}", log_name, "--ckpt_path=best"))
    # test logs into the checkpoint's run folder rather than a new version
    assert len(glob.glob(str(tmp_path / "logs" / name / "version_*"))) == 1


@pytest.mark.parametrize("trainer_config", ["cpu.yaml", "cpu_bf16.yaml", "gpu_bf16.yaml", "ddp.yaml"])
def test_trainer_configs_parse_and_cpu_runs(trainer_config, cli_args, tmp_path):
    # GPU configs are run with the accelerator switched to the CPU (same precision and the rest).
    overrides = [] if trainer_config.startswith("cpu") else ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    if trainer_config == "ddp.yaml":
        overrides.append("--trainer.strategy=auto")
    run(cli_args("fit", "--config=configs/ae.yaml", f"--config=configs/trainer/{trainer_config}", *overrides))
    assert len(checkpoints(tmp_path, "ae")) == 2


def test_model_chosen_by_class_name_and_print_config(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["fit", "--model=VAE", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: aelight.models.vae.VAE" in printed or "class_path: aelight.VAE" in printed
    assert "likelihood: bernoulli" in printed


def test_tensorboard_holds_scalars_and_reconstruction_images(cli_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(cli_args("fit", "--config=configs/vae.yaml", "--trainer.log_every_n_steps=1", epochs=2))
    (run_dir,) = glob.glob(str(tmp_path / "logs" / "vae" / "version_*"))
    events = EventAccumulator(run_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"images/reconstructions", "images/prior_samples"} <= set(tags["images"])
    image = events.Images("images/reconstructions")
    assert len(image) == 2  # one per validation epoch, not for the sanity check
    assert image[-1].height > 2 * 28 and image[-1].width > 16 * 28  # input row above reconstruction row
    for tag in (
        "train/loss",
        "train/kl",
        "train/loss_epoch",
        "train/elbo_epoch",
        "val/loss",
        "val/elbo",
        "val/kl",
        "val/recon_nll",
        "val/recon_mse",
        "val/psnr",
        "val/mse",
        "train/lr-Adam",
    ):
        assert tag in tags["scalars"], tag
    assert "val/ssim" not in tags["scalars"]  # SSIM in fit's validation only with ssim_in_fit (costly on CPUs)
    assert os.path.exists(os.path.join(run_dir, "config.yaml")) and os.path.exists(
        os.path.join(run_dir, "hparams.yaml")
    )


def test_denoising_images_show_noisy_output_clean_rows(cli_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(cli_args("fit", "--config=configs/denoising.yaml", "--model.init_args.ssim_in_fit=true"))
    (run_dir,) = glob.glob(str(tmp_path / "logs" / "denoising" / "version_*"))
    events = EventAccumulator(run_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    image = events.Images("images/reconstructions")[-1]
    assert image.height > 3 * 28  # three rows
    assert {"val/denoise_psnr", "val/denoise_ssim", "val/psnr", "val/ssim"} <= set(events.Tags()["scalars"])


def test_resume_from_last_continues_in_the_same_run(cli_args, tmp_path):
    run(cli_args("fit", "--config=configs/ae.yaml", epochs=1))
    (last,) = [c for c in checkpoints(tmp_path, "ae") if c.endswith("last.ckpt")]
    assert torch.load(last, weights_only=True)["epoch"] == 0
    run(cli_args("fit", "--config=configs/ae.yaml", "--ckpt_path=last", epochs=3))
    ckpt = torch.load(last, weights_only=True)
    # 2 Lightning batches of 8 optimizer steps (the engine's default steps_per_batch) per epoch
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 3 * 2 * 8
    assert len(glob.glob(str(tmp_path / "logs" / "ae" / "version_*"))) == 1


def test_last_checkpoint_is_written_every_epoch_even_without_improvement(cli_args, tmp_path):
    # Monitoring the (growing) epoch number in min mode: only epoch 0 is ever "best".
    run(cli_args("fit", "--config=configs/ae.yaml", "--checkpoint.monitor=epoch", epochs=3))
    best, last = checkpoints(tmp_path, "ae")
    assert torch.load(best, weights_only=True)["epoch"] == 0
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_validate_and_predict_from_a_checkpoint(cli_args, tmp_path, capsys):
    run(cli_args("fit", "--config=configs/ae.yaml"))
    run(cli_args("validate", "--config=configs/ae.yaml", "--ckpt_path=best"))
    assert "val/ssim" in capsys.readouterr().out
    run(cli_args("predict", "--config=configs/ae.yaml", "--ckpt_path=last", "--data.predict_split=test"))
    (path,) = glob.glob(str(tmp_path / "logs" / "ae" / "version_*" / "predictions.pt"))
    out = torch.load(path, weights_only=True)
    assert out["z"].shape == (200, 32) and out["recon"].shape == (200, 1, 28, 28) and out["label"].shape == (200,)


def test_unknown_key_wrong_type_unknown_class_exit_2_in_one_line(capsys):
    cases = {
        "--model.init_args.nope=1": "Option 'nope' is not accepted",
        "--data.batch_sizee=3": "Option 'batch_sizee' is not accepted",
        "--data.batch_size=abc": 'Parser key "data.batch_size": Expected a',
        "--model=NoSuchModel": "NoSuchModel",
        "--bogus=1": "unrecognized arguments: --bogus=1",
    }
    for bad, said in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config=configs/ae.yaml", bad])
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2, (bad, stderr[-2000:])
        (line,) = stderr.strip().splitlines()  # no usage, no list of the classes the parser tried
        assert line.startswith("aelight: error: ") and said in line, (bad, line)
        assert line.endswith("(aelight fit --help lists the options)"), line


def test_missing_data_exits_nonzero_with_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config=configs/ae.yaml", f"--data.data_dir={tmp_path}", "--data.download=false",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "Traceback" not in stderr
    assert f"{tmp_path}/MNIST/raw" in stderr and "t10k-labels-idx1-ubyte" in stderr


def test_a_run_prints_its_own_lines_and_no_notices_of_the_libraries_underneath(cli_args):
    proc = subprocess.run([sys.executable, "-m", "aelight", "fit", "--config=configs/ae.yaml", *cli_args()],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "aelight engine: 8 optimizer steps per batch" in output and "`Trainer.fit` stopped" in output
    assert "litlogger" not in output and "LeafSpec" not in output, output[-3000:]


def test_ckpt_alias_without_runs_is_a_clear_error(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(cli_args("test", "--config=configs/ae.yaml", "--ckpt_path=best"))
    assert exit_.value.code == 1
    assert "no best.ckpt under" in capsys.readouterr().err


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(cli_args, tmp_path, capsys):
    run(cli_args("fit", "--config=configs/vae.yaml"))
    (last,) = [c for c in checkpoints(tmp_path, "vae") if c.endswith("last.ckpt")]
    before = open(last, "rb").read()
    with pytest.raises(SystemExit) as exit_:  # lr 1e3 drives the log-variance to overflow; same run folder
        run(
            cli_args(
                "fit",
                "--config=configs/vae.yaml",
                "--trainer.logger.init_args.version=0",
                "--model.init_args.optimizer.init_args.lr=1e3",
                epochs=3,
                batches=10,
            )
        )
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"non-finite loss at step \d+ \(terms not finite: loss", err), err
    assert open(last, "rb").read() == before


def test_init_weights_starts_a_new_run_from_a_checkpoints_weights(cli_args, tmp_path, capsys):
    run(cli_args("fit", "--config=configs/ae.yaml", "--trainer.logger.init_args.name=first"))
    (source,) = [c for c in checkpoints(tmp_path, "first") if c.endswith("last.ckpt")]
    trained = torch.load(source, weights_only=True)["state_dict"]
    frozen = "--model.init_args.optimizer.init_args.lr=0"  # the new run keeps whatever weights it starts from
    run(cli_args("fit", "--config=configs/ae.yaml", frozen, f"--model.init_args.init_weights={source}"))
    (last,) = [c for c in checkpoints(tmp_path, "ae") if c.endswith("last.ckpt")]
    ckpt = torch.load(last, weights_only=True)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in trained.items())
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2 * 8  # a fresh count, unlike a resume
    run(cli_args("fit", "--config=configs/ae.yaml", frozen, "--trainer.logger.init_args.name=scratch"))
    (scratch,) = [c for c in checkpoints(tmp_path, "scratch") if c.endswith("last.ckpt")]
    assert not torch.equal(torch.load(scratch, weights_only=True)["state_dict"]["encoder.net.0.weight"],
                           trained["encoder.net.0.weight"])  # fmt: skip

    with pytest.raises(SystemExit) as exit_:  # an AE's weights do not fit a VAE
        run(cli_args("fit", "--config=configs/vae.yaml", f"--model.init_args.init_weights={source}"))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"init_weights {source}: its weights do not fit this VAE" in err and "Traceback" not in err


def test_checkpoints_that_kept_speed_settings_among_the_model_arguments_still_load(cli_args, tmp_path, capsys):
    from aelight.apps.common import load_model
    from aelight.errors import AelightError

    run(cli_args("fit", "--config=configs/vae.yaml"))  # the VAE passes its extra arguments on to AE
    (last,) = [c for c in checkpoints(tmp_path, "vae") if c.endswith("last.ckpt")]
    ckpt = torch.load(last, weights_only=True)
    hparams = ckpt["hyper_parameters"]
    hparams.pop("init_weights")  # as written before it existed, with the engine's settings of that time
    hparams.update(steps_per_batch=8, compile_step=False, cuda_graph=False, compile_networks=True)
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = load_model(str(tmp_path / "old.ckpt"), "cpu")
    assert type(model).__name__ == "VAE"
    assert torch.equal(model.encoder.net[0].weight, ckpt["state_dict"]["encoder.net.0.weight"])
    run(cli_args("test", "--config=configs/vae.yaml", f"--ckpt_path={tmp_path / 'old.ckpt'}"))
    assert "test/elbo" in capsys.readouterr().out

    hparams["an_option_from_elsewhere"] = 1  # a checkpoint that does not fit: one message, no traceback
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(AelightError, match="does not fit this version of aelight's VAE .*an_option_from_elsewhere"):
        load_model(str(tmp_path / "other.ckpt"), "cpu")


def test_trainer_gradient_clipping_applies_to_models_stepping_several_times_a_batch(cli_args, tmp_path):
    # Lightning refuses trainer-level clipping for manual optimization; aelight's training engine
    # (8 steps per Lightning batch by default) clips before each of its steps instead.
    # Plain SGD so that clipping shows in the update size (Adam would rescale the clipped gradient).
    runs = {
        "start": ["--model.init_args.optimizer.init_args.lr=0"],
        "free": [],
        "clipped": ["--trainer.gradient_clip_val=1e-4"],
    }
    weights = {}
    for name, extra in runs.items():  # the same seed, so the same initial weights
        sgd = ["--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=1.0"]
        run(cli_args("fit", "--config=configs/ae.yaml", *sgd, *extra, f"--trainer.logger.init_args.name={name}"))
        (last,) = [c for c in checkpoints(tmp_path, name) if c.endswith("last.ckpt")]
        ckpt = torch.load(last, weights_only=True)
        assert ckpt["global_step"] == 16
        weights[name] = ckpt["state_dict"]["encoder.net.0.weight"]
    free, clipped = ((weights[k] - weights["start"]).norm().item() for k in ("free", "clipped"))
    assert 0 < clipped <= 16 * 1e-4 * 1.001 < free  # 16 steps of at most lr x 1e-4 in norm


def test_gradient_accumulation_with_several_steps_a_batch_is_a_clear_error(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(cli_args("fit", "--config=configs/ae.yaml", "--trainer.accumulate_grad_batches=2"))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "accumulate_grad_batches=2 needs engine.steps_per_batch: 1" in err and "Traceback" not in err


def test_gradient_accumulation_with_cuda_graph_names_cuda_graph(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(cli_args("fit", "--config=configs/ae.yaml", "--engine.steps_per_batch=1",
                     "--engine.cuda_graph=true", "--trainer.accumulate_grad_batches=2"))  # fmt: skip
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "accumulate_grad_batches=2 needs engine.cuda_graph: false" in err, err
    assert "Traceback" not in err


def test_a_sweep_s_options_are_checked_by_the_trials_parser_value_by_value(tmp_path, monkeypatch):
    import yaml

    from aelight.sweep import preflight, spec

    monkeypatch.chdir(REPO)

    def first_problem(grid: dict, search: dict, given: tuple = ()):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({"config": "configs/ae.yaml", "grid": grid, "search": search, "trials": 2}))
        checks = preflight.trial_checks(spec.load_spec(str(path)), list(given), tmp_path)
        return preflight.first_problem([(what, c.argv, bare.argv) for what, c, bare in checks])

    for grid, search, named, reason in (  # each grid value, each end of a search range, each choice
        ({"data.batch_size": [16, "many"]}, {}, "grid.data.batch_size: 'many'", "data.batch_size"),
        ({}, {"trainer.max_epochs": {"low": 1, "high": 2.5}}, "search.trainer.max_epochs: 2.5", "max_epochs"),
        ({}, {"model.init_args.bogus": {"choices": [1, 2]}}, "search.model.init_args.bogus: 1", "bogus"),
    ):
        what, problem = first_problem(grid, search)
        assert what == named and reason in problem, (what, problem)
    assert (
        first_problem(
            {"data.batch_size": [16, 32]}, {"model.init_args.optimizer.init_args.lr": {"low": 1e-4, "high": 1e-2}}
        )
        is None
    )
    # a typo on the sweep's own command line is blamed on the command line, not on the first grid value
    what, problem = first_problem({"data.batch_size": [16, 32]}, {}, ("--trainer.max_epocs=1",))
    assert what == preflight.COMMAND_LINE and "max_epocs" in problem
    assert preflight.message(None, (what, problem)).startswith("aelight sweep: an option given on its command line")
    # an abbreviation of a trial option is refused, not taken for the option it abbreviates
    what, problem = first_problem({"data.batch_size": [16, 32]}, {}, ("--trainer.max_epoch=1",))
    assert what == preflight.COMMAND_LINE and "max_epoch" in problem
    # a bad grid value stays the grid value's, whatever the command line adds
    what, _ = first_problem({"data.batch_size": [16, "many"]}, {}, ("--trainer.max_epochs=1",))
    assert what == "grid.data.batch_size: 'many'"


def test_class_paths_that_configs_of_earlier_releases_name_still_parse_to_the_same_classes():
    from aelight import loggers, sweep_pruning
    from aelight.run.api import argument_problem
    from aelight.sweep import pruning
    from aelight.training import loggers as training_loggers

    assert loggers.TensorBoardLogger is training_loggers.TensorBoardLogger
    assert loggers.TensorBoardRun is training_loggers.TensorBoardRun
    assert sweep_pruning.SweepPruning is pruning.SweepPruning
    old = [
        "--trainer.logger.class_path=aelight.loggers.TensorBoardLogger",
        "--trainer.callbacks+=aelight.loggers.TensorBoardRun",
    ]
    assert argument_problem(old) is None
    assert "aelight.loggers.NoSuchLogger" in argument_problem(
        ["--trainer.logger.class_path=aelight.loggers.NoSuchLogger"]
    )
