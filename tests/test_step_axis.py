"""What users see counts optimizer steps: TensorBoard's scalars and images share one axis (the
optimizer step), a later ``test`` writes at its checkpoint's step and replaces nothing fit wrote,
``log_every_n_steps`` and the progress bar count optimizer steps."""

import glob

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aelight.commands import main


def events(run_dir: str) -> EventAccumulator:
    acc = EventAccumulator(run_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def scalar_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def test_scalars_and_images_share_the_optimizer_step_axis(cli_args, tmp_path):
    # 500 training images, batches of 32: 16 optimizer steps an epoch, 4 Lightning batches of 4 steps
    main(cli_args("fit", "--config=configs/ae.yaml", "--engine.steps_per_batch=4", "--trainer.log_every_n_steps=8",
                  epochs=2, batches=4))  # fmt: skip
    (run_dir,) = glob.glob(str(tmp_path / "logs" / "ae" / "version_0"))
    last = torch.load(f"{run_dir}/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 32
    acc = events(run_dir)
    assert scalar_steps(acc, "val/loss") == [16, 32]  # one point per epoch, at the optimizer step
    assert [e.step for e in acc.Images("images/reconstructions")] == [16, 32]
    assert scalar_steps(acc, "train/loss") == [8, 16, 24, 32]  # log_every_n_steps=8 counts optimizer steps
    for tag in acc.Tags()["scalars"]:
        assert max(scalar_steps(acc, tag)) <= 32, tag  # nothing on a Lightning-batch axis beyond it


def test_test_results_stand_at_the_checkpoints_step_and_keep_fits_scalars(cli_args, tmp_path):
    main(cli_args("fit", "--config=configs/ae.yaml", "--engine.steps_per_batch=4", epochs=2, batches=4))
    (run_dir,) = glob.glob(str(tmp_path / "logs" / "ae" / "version_0"))
    before = events(run_dir)
    fit_scalars = {tag: [(e.step, e.value) for e in before.Scalars(tag)] for tag in before.Tags()["scalars"]}
    main(cli_args("test", "--config=configs/ae.yaml", "--ckpt_path=best"))
    after = events(run_dir)
    best_step = torch.load(f"{run_dir}/checkpoints/best.ckpt", weights_only=True)["global_step"]
    for tag, points in fit_scalars.items():
        # TensorBoard shows the newest value of a step: fit's points must still be the newest
        newest = {}
        for e in after.Scalars(tag):
            newest[e.step] = e.value
        assert [(step, newest[step]) for step, _ in points] == points, tag
    for tag in ("test/loss", "test/mse", "test/psnr", "test/ssim"):
        assert scalar_steps(after, tag) == [best_step], tag


def test_the_progress_bar_counts_optimizer_steps(cli_args, capsys):
    args = [a for a in cli_args(batches=3) if "enable_progress_bar" not in a]
    main(["fit", "--config=configs/ae.yaml", "--engine.steps_per_batch=4", *args])
    out = capsys.readouterr().out  # tqdm writes to stdout here
    # 3 Lightning batches of 4 optimizer steps each
    assert "12/12" in out and "step/s" in out, out[-2000:]
    assert "3/3 [" not in out.split("Validation")[0]
