"""TensorBoard compares runs: each run registers readable hyperparameters and its real metrics in
HParams (every run the same columns), test results join them without replacing fit's points, terms
that mean the same have the same name across variants, and image grids are labelled and legible."""

import glob
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from aelight.callbacks.images import LABEL_WIDTH, code_activity, labelled_grid
from aelight.commands import main


def events(run_dir: str) -> EventAccumulator:
    acc = EventAccumulator(run_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_records(acc: EventAccumulator) -> dict:
    return {
        tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in acc.PluginTagToContent("hparams").items()
    }


def session_values(record) -> dict:
    values = {}
    for name, value in record.session_start_info.hparams.items():
        values[name] = getattr(value, value.WhichOneof("kind"))
    return values


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """An AE, a denoising AE and a VAE fitted for 2 short epochs, each then tested from best.ckpt."""
    from tests.conftest import short_run_args

    logs = tmp_path_factory.mktemp("tb_logs")
    folders = {}
    for name in ("ae", "denoising", "vae"):
        args = short_run_args(tiny_data, logs, epochs=2, batches=3)
        main(["fit", f"--config=configs/{name}.yaml", "--engine.steps_per_batch=2", *args])
        (folders[name],) = glob.glob(str(logs / name / "version_0"))
        folders[name + "_fit"] = events(folders[name])
        # max_epochs 7 here: what fit registered (2) must stay
        main(["test", f"--config=configs/{name}.yaml", "--ckpt_path=best", *short_run_args(tiny_data, logs, epochs=7)])
    return folders


def test_each_run_registers_readable_settings_and_real_metrics_in_hparams(runs):
    for name, model, code_size in (("ae", "AE", 32), ("denoising", "DenoisingAE", 64), ("vae", "VAE", 32)):
        acc = events(runs[name])
        records = hparams_records(acc)
        experiment = records["_hparams_/experiment"].experiment
        columns = [h.name for h in experiment.hparam_infos]
        # the same columns in every run (each variant's own included); TensorBoard shows the five
        # marked as differing first
        assert columns[:5] == ["model", "code_size", "hidden", "lr", "batch_size"]
        assert [h.name for h in experiment.hparam_infos if h.differs] == columns[:5]
        assert {"beta", "noise", "noise_level", "contraction", "seed", "dataset"} <= set(columns)
        assert not [c for c in columns if "/" in c or c.startswith("_") or "init_args" in c]
        types = {h.name: api_pb2.DataType.Name(h.type) for h in experiment.hparam_infos}
        assert types["binarize"] == "DATA_TYPE_BOOL"  # shown as true/false, not 0.0000
        assert types["lr"] == "DATA_TYPE_FLOAT64" and types["model"] == "DATA_TYPE_STRING"
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert {"val/loss", "val/mse", "val/psnr", "val/loss_best", "test/mse", "test/psnr", "test/ssim"} <= metric_tags
        values = session_values(records["_hparams_/session_start_info"])
        assert values["model"] == model and values["lr"] == pytest.approx(1e-3) and values["binarize"] is False
        assert values["code_size"] == code_size and values["batch_size"] == 32 and values["seed"] == 42
        assert api_pb2.Status.Name(records["_hparams_/session_end_info"].session_end_info.status) == "STATUS_SUCCESS"
        # every registered metric the run has is a real, finite number in the run's scalars
        scalars = set(acc.Tags()["scalars"])
        for tag in ("val/loss", "val/mse", "val/psnr", "val/loss_best", "val/mse_best", "test/mse", "test/psnr"):
            assert tag in scalars and math.isfinite(acc.Scalars(tag)[-1].value), (name, tag)
        assert "hp_metric" not in scalars  # no placeholder
    denoising = session_values(hparams_records(events(runs["denoising"]))["_hparams_/session_start_info"])
    assert denoising["noise"] == "gaussian" and denoising["noise_level"] == pytest.approx(0.5)
    assert session_values(hparams_records(events(runs["vae"]))["_hparams_/session_start_info"])["beta"] == 1


def test_the_best_validation_values_are_those_of_the_lowest_val_loss(runs):
    acc = events(runs["ae"])
    losses = [e.value for e in acc.Scalars("val/loss")]
    mses = [e.value for e in acc.Scalars("val/mse")]
    best = int(np.argmin(losses))
    assert acc.Scalars("val/loss_best")[-1].value == pytest.approx(losses[best])
    assert acc.Scalars("val/mse_best")[-1].value == pytest.approx(mses[best])


def test_test_joins_the_run_without_replacing_fits_points_or_registration(runs):
    for name in ("ae", "vae"):
        before, after = runs[name + "_fit"], events(runs[name])
        for tag in before.Tags()["scalars"]:
            newest = {e.step: e.value for e in after.Scalars(tag)}
            assert all(newest[e.step] == e.value for e in before.Scalars(tag)), (name, tag)
        best_step = torch.load(f"{runs[name]}/checkpoints/best.ckpt", weights_only=True)["global_step"]
        assert [e.step for e in after.Scalars("test/mse")] == [best_step]
        start = hparams_records(after)["_hparams_/session_start_info"]
        assert session_values(start)["max_epochs"] == 2  # fit's registration, not the test command's


def test_terms_that_mean_the_same_have_the_same_name_across_variants(runs):
    tags = {name: set(events(runs[name]).Tags()["scalars"]) for name in ("ae", "denoising", "vae")}
    for name, scalars in tags.items():
        assert {"train/recon_mse_epoch", "val/recon_mse", "val/mse", "test/mse", "test/psnr"} <= scalars, name
    assert {"val/recon_nll", "val/kl", "val/elbo", "test/elbo"} <= tags["vae"]  # nats under their own names
    assert not any(t.endswith("/recon") for t in set.union(*tags.values()))


def test_every_variant_gets_its_labelled_image_grids(runs):
    expected = {
        "ae": {"images/reconstructions": 2, "images/code_activity": None},
        "denoising": {"images/reconstructions": 3, "images/code_activity": None},
        "vae": {"images/reconstructions": 2, "images/code_activity": None, "images/prior_samples": 2},
    }
    for name, grids in expected.items():
        acc = events(runs[name])
        assert set(acc.Tags()["images"]) == set(grids), name
        for tag, rows in grids.items():
            image = acc.Images(tag)[-1]
            if rows is not None:  # rows of 84-px digits with 4-px gaps, labels in a column at the left
                assert image.height == rows * 84 + (rows - 1) * 4, (name, tag)
                assert image.width >= LABEL_WIDTH + 8 * 84, (name, tag)
            assert acc.Images(tag)[-1].step == acc.Scalars("val/loss")[-1].step


def test_grid_rows_carry_their_names_drawn_left_of_the_images():
    rows = [("input", torch.zeros(4, 1, 28, 28)), ("noisy", torch.zeros(4, 1, 28, 28))]
    picture = labelled_grid(rows)
    assert picture.shape == (2 * 84 + 4, LABEL_WIDTH + 4 * (84 + 4), 3)
    label_area, image_area = picture[:, :LABEL_WIDTH], picture[:, LABEL_WIDTH:]
    assert (image_area[:84, :84] == 0).all()  # the black test images, 3x, untouched by labels
    red = (label_area[..., 0] > 150) & (label_area[..., 1] < 100)
    assert red[:84].any() and red[88:].any()  # a label drawn in each row
    blank = labelled_grid([("", torch.zeros(4, 1, 28, 28))])
    assert not ((blank[..., 0] > 150) & (blank[..., 1] < 100)).any()
    Image.open(io.BytesIO(_png(picture)))  # a valid picture


def test_code_activity_shows_which_units_are_active():
    codes = torch.zeros(3, 10)
    codes[:, 4] = 2.0
    codes[1, 7] = 1.0
    picture = code_activity(codes, scale=1)
    assert picture.shape[0] == 3 and picture[0].argmax() // (picture.shape[1] // 10) == 4
    assert picture.max() == 255 and picture[0, 0] == 0


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
