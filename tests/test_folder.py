"""aelight.data.ImageFolderDataModule: your own images, in the anomaly layout (train/good, test/good,
test/<defect>) or in class folders, decoded once and cached, served like MNIST to every model and
command; the folder anomaly protocol end to end, down to `aelight export` and `aelight score`."""

import csv
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from aelight.apps import common
from aelight.commands import main as aelight
from aelight.data import ImageFolderDataModule, folder
from aelight.errors import DataError
from tests.conftest import synthetic_digits

GOOD, DEFECTS = 3, {"seven": 7, "one": 1}  # the synthetic digit classes standing for good and defective parts


def write_images(path, images, kind: str = "png", rgb: bool = False, sizes=None) -> list[str]:
    os.makedirs(path, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        picture = Image.fromarray(image)
        if rgb:  # three different channels, so that a channel mix-up shows
            picture = Image.merge(
                "RGB", (picture, picture.transpose(Image.FLIP_LEFT_RIGHT), picture.point(lambda v: 255 - v))
            )
        if sizes:
            picture = picture.resize(sizes[i % len(sizes)])
        files.append(os.path.join(path, f"{i:03d}.{kind}"))
        picture.save(files[-1])
    return files


@pytest.fixture(scope="module")
def anomaly_root(tmp_path_factory):
    """The MVTec layout: 60 good training images, 10 good and 8 of each defect type to test."""
    root = tmp_path_factory.mktemp("parts")
    images, labels = synthetic_digits(600, seed=5)
    write_images(root / "train" / "good", images[labels == GOOD][:60])
    test_images, test_labels = synthetic_digits(400, seed=6)
    write_images(root / "test" / "good", test_images[test_labels == GOOD][:10])
    for name, label in DEFECTS.items():
        write_images(root / "test" / name, test_images[test_labels == label][:8])
    return root


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory):
    """Two classes of RGB images of two sizes, PNG and JPEG, in class folders."""
    root = tmp_path_factory.mktemp("rgb")
    images, labels = synthetic_digits(120, seed=7)
    write_images(root / "round", images[labels < 5][:40], "png", rgb=True, sizes=[(32, 28), (36, 30)])
    write_images(root / "square", images[labels >= 5][:40], "jpg", rgb=True, sizes=[(32, 28), (36, 30)])
    return root


def module(root, tmp_path, **kw) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_the_anomaly_layout_trains_on_good_images_holds_out_a_seeded_share_and_labels_test_images_by_defect(
    anomaly_root, tmp_path
):
    dm = module(anomaly_root, tmp_path, val_fraction=0.2)
    assert dm.layout.kind == "anomaly" and dm.class_names == ["good", "one", "seven"]  # good first, defects sorted
    assert dm.image_shape == (1, 28, 28)
    train, val = set(dm.split_files("train")), set(dm.split_files("val"))
    assert len(val) == 12 and len(train) == 48 and not train & val
    assert all("/train/good/" in f for f in train | val)
    assert dm.split_files("val") == module(anomaly_root, tmp_path, val_fraction=0.2).split_files("val")  # seeded
    assert set(dm.split_files("val")) != set(
        module(anomaly_root, tmp_path, val_fraction=0.2, split_seed=1).split_files("val")
    )
    images, labels = dm.split_tensors("test")
    names = [dm.class_names[i] for i in labels.tolist()]
    assert [os.path.basename(os.path.dirname(f)) for f in dm.split_files("test")] == names
    assert names.count("good") == 10 and names.count("one") == names.count("seven") == 8
    for path, image in zip(dm.split_files("test"), images):  # the oracle: Pillow's own decoding of the file
        assert torch.equal(image[0], torch.from_numpy(np.array(Image.open(path).convert("L"))))


def test_the_images_are_decoded_once_and_a_changed_file_is_decoded_again(anomaly_root, tmp_path, monkeypatch):
    first = module(anomaly_root, tmp_path)
    assert glob.glob(str(tmp_path / "cache" / "*.pt")) == [first.cache_path()]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder, "read_pixels", no_decoding)
    again = module(anomaly_root, tmp_path)
    assert torch.equal(again.split_tensors("train")[0], first.split_tensors("train")[0])
    monkeypatch.undo()
    changed = first.split_files("train")[0]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer file under the same name
    assert len(glob.glob(str(tmp_path / "cache" / "*.pt"))) == 1
    module(anomaly_root, tmp_path)  # decodes again, into a cache file of its own
    assert len(glob.glob(str(tmp_path / "cache" / "*.pt"))) == 2


def test_rgb_images_of_two_sizes_are_resized_and_cropped_as_pillow_does_and_both_data_paths_serve_them(
    rgb_root, tmp_path
):
    with pytest.raises(DataError, match="mixed sizes.*--data.resize"):
        module(rgb_root, tmp_path)
    dm = module(rgb_root, tmp_path, resize=[32, 36], center_crop=[24, 32], test_fraction=0.25)
    assert dm.layout.kind == "classes" and dm.class_names == ["round", "square"] and dm.image_shape == (3, 24, 32)
    images, _ = dm.split_tensors("train")
    path = dm.split_files("train")[0]
    expected = np.asarray(Image.open(path).convert("RGB").resize((36, 32), Image.BILINEAR))[4:28, 2:34]
    assert torch.equal(images[0].permute(1, 2, 0), torch.from_numpy(expected.copy()))
    resident = next(iter(dm.val_dataloader()))
    dm.device_resident = False
    loaded = next(iter(dm.val_dataloader()))
    assert torch.equal(resident[0], loaded[0]) and torch.equal(resident[1], loaded[1])
    assert resident[0].shape[1:] == (3, 24, 32) and resident[0].dtype == torch.float32 and resident[0].max() <= 1


def bad_folder(tmp_path, anomaly_root, case: str):
    root = tmp_path / case
    if case == "empty":
        (root / "train" / "good").mkdir(parents=True)
        return root, "no images there"
    files = write_images(root / "train" / "good", synthetic_digits(12, seed=1)[0])
    if case == "truncated":
        data = open(files[3], "rb").read()
        open(files[3], "wb").write(data[: len(data) // 2])
        return root, f"{files[3]}: not a readable image"
    if case == "not_an_image":
        (root / "train" / "good" / "notes.txt").write_text("taken on Monday")
        return root, "notes.txt: not an image file"
    if case == "mixed_sizes":
        Image.new("L", (30, 28)).save(files[5])
        return root, f"{files[5]}: 30x28 pixels.*mixed sizes"
    write_images(root / "test" / "scratch", synthetic_digits(3, seed=2)[0])  # no test/good
    return root, "no good/ folder there"


@pytest.mark.parametrize("case", ["empty", "truncated", "not_an_image", "mixed_sizes", "test_without_good"])
def test_a_bad_folder_is_one_line_that_names_the_file(case, tmp_path, anomaly_root):
    root, message = bad_folder(tmp_path, anomaly_root, case)
    with pytest.raises(DataError, match=message):
        module(root, tmp_path)


def test_the_cli_reports_a_bad_folder_in_one_line_and_leaves_no_run_folder(tmp_path, anomaly_root, capsys):
    root, _ = bad_folder(tmp_path, anomaly_root, "truncated")
    with pytest.raises(SystemExit) as exit_:
        aelight(["fit", "--data=aelight.data.ImageFolderDataModule", f"--data.root={root}",
                 f"--data.cache_dir={tmp_path / 'cache'}",
                 f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("aelight: error: ") and err.count("\n") == 1, err
    assert "not a readable image" in err and not glob.glob(str(tmp_path / "logs" / "*" / "version_*"))


def folder_fit_args(root, tmp_path, *extra, epochs: int = 2) -> list[str]:
    return [
        *extra,
        f"--data.root={root}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]


def test_folder_anomaly_detection_reports_per_defect_and_its_export_scores_new_files_as_the_model_does(
    anomaly_root, tmp_path, capsys
):
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "report"
    aelight(["anomaly", "--config=configs/folder_anomaly.yaml", "--data.resize=32", "--out", str(out),
             *folder_fit_args(anomaly_root, tmp_path, epochs=3)])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["path"] for r in rows] == sorted(glob.glob(str(anomaly_root / "test" / "*" / "*.png")))
    assert {r["label"] for r in rows} == {"good", "one", "seven"} and report["test_images"] == 26
    scores = np.array([float(r["score"]) for r in rows])
    anomalous = np.array([r["label"] != "good" for r in rows])
    assert report["auroc"] == pytest.approx(roc_auc_score(anomalous, scores), abs=1e-6)  # sklearn: the oracle
    for name in DEFECTS:
        pair = np.array([r["label"] in ("good", name) for r in rows])
        assert report["defects"][name]["auroc"] == pytest.approx(roc_auc_score(anomalous[pair], scores[pair]), abs=1e-6)
    # the threshold: numpy's percentile of the held-out good images' scores, by the run's best model
    model, trained = common.load_run(report["checkpoint"], "cpu")
    dm = common.run_data(trained, "unused")
    val = common.images_and_labels(dm, "val", "cpu")[0]
    assert dm.image_shape == (1, 32, 32) and len(val) == report["normal_val_images"] == 6
    val_scores = model.anomaly_score(val).numpy()
    assert report["threshold"] == pytest.approx(float(np.percentile(val_scores, 95)), rel=1e-5)
    assert [int(r["anomalous"]) for r in rows] == [int(s > report["threshold"]) for s in scores]
    # exported with the data's resize in its metadata, then applied to the files by aelight score
    aelight(["export", "--ckpt_path", report["checkpoint"], "--out", str(tmp_path / "detector")])
    meta = json.loads((tmp_path / "detector" / "metadata.json").read_text())
    assert meta["input"]["resize"] == [32, 32] and meta["class_names"] == ["good", "one", "seven"]
    assert meta["threshold"] == pytest.approx(report["threshold"], rel=1e-5)
    capsys.readouterr()
    aelight(["score", "--model", str(tmp_path / "detector"), str(anomaly_root / "test")])
    scored = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["path"] for r in scored] == [r["path"] for r in rows]
    assert np.allclose([float(r["score"]) for r in scored], scores, rtol=1e-5, atol=1e-8)


def test_every_application_reads_a_folder_run_as_it_trained(rgb_root, tmp_path):
    networks = ["--model.init_args.encoder=aelight.components.ConvEncoder",
                "--model.init_args.decoder=aelight.components.ConvDecoder"]  # fmt: skip
    aelight(["fit", "--data=aelight.data.ImageFolderDataModule", "--data.resize=[24, 32]", "--data.test_fraction=0.25",
             *networks, *folder_fit_args(rgb_root, tmp_path, epochs=1)])  # fmt: skip
    (ckpt,) = glob.glob(str(tmp_path / "logs" / "ae" / "version_0" / "checkpoints" / "best.ckpt"))
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert (
        hparams["encoder"]["init_args"]["image_shape"] == hparams["decoder"]["init_args"]["image_shape"] == [3, 24, 32]
    )
    run_config = str(tmp_path / "logs" / "ae" / "version_0" / "config.yaml")
    for command in ("validate", "test", "predict"):
        aelight([command, f"--config={run_config}", "--ckpt_path=best"])
    predictions = torch.load(glob.glob(str(tmp_path / "logs" / "ae" / "version_0" / "predictions.pt"))[0])
    assert predictions["recon"].shape == (20, 3, 24, 32) and predictions["label"].tolist().count(0) > 0
    for command in ("reduce", "features", "denoise"):
        aelight([command, "--ckpt_path", ckpt, "--out", str(tmp_path / command)])
    reduced = json.loads((tmp_path / "reduce" / "report.json").read_text())
    features = json.loads((tmp_path / "features" / "report.json").read_text())
    denoised = json.loads((tmp_path / "denoise" / "report.json").read_text())
    assert (
        reduced["code_size"] == features["code_size"] == 32 and 0 <= features["logistic_regression_test_accuracy"] <= 1
    )
    assert denoised["gaussian_0.5"]["noisy"]["psnr"] < denoised["gaussian_0.25"]["noisy"]["psnr"]
    aelight(["fit", "--data=aelight.data.ImageFolderDataModule", "--data.resize=[24, 32]", "--model=aelight.models.VAE",
             *folder_fit_args(rgb_root, tmp_path, epochs=1)])  # fmt: skip
    (vae,) = glob.glob(str(tmp_path / "logs" / "vae" / "version_0" / "checkpoints" / "best.ckpt"))
    aelight(["generate", "--ckpt_path", vae, "--samples=64", "--out", str(tmp_path / "generate")])
    generated = json.loads((tmp_path / "generate" / "report.json").read_text())
    assert generated["judge"] is None and generated["vae"]["samples"] == 64
    assert (tmp_path / "generate" / "vae_samples.png").exists()
