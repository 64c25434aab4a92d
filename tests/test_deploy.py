"""aelight export and aelight score: a trained one-class detector as an ONNX (or TorchScript) file
with its threshold, applied to image files without torch; checked against the PyTorch model on the
same images, and bad input refused in one line with nothing written."""

import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aelight.apps import common
from aelight.commands import main as aelight
from aelight.deploy import export
from tests.conftest import REPO, short_run_args


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def detectors(tiny_data, tmp_path_factory):
    """A plain AE and a VAE trained briefly on digit 3 of the tiny data, and the AE exported."""
    logs = tmp_path_factory.mktemp("deploy_logs")
    for config in ("ae", "vae"):
        aelight(["fit", f"--config=configs/{config}.yaml", "--data.classes=[3]",
                 *short_run_args(tiny_data, logs, epochs=2, batches=3)])  # fmt: skip
    ckpts = {c: glob.glob(str(logs / c / "version_0" / "checkpoints" / "best.ckpt"))[0] for c in ("ae", "vae")}
    out = logs / "detector"
    aelight(["export", "--ckpt_path", ckpts["ae"], f"--data.data_dir={tiny_data}", "--out", str(out)])
    return {**ckpts, "onnx": out}


def write_pngs(folder, images: np.ndarray, prefix: str = "") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{prefix}{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def fails_with(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        aelight(list(argv))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("aelight: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_export_holds_the_threshold_of_the_normal_validation_images_and_what_made_it(detectors, tiny_data):
    meta = json.loads((detectors["onnx"] / "metadata.json").read_text())
    assert sorted(p.name for p in detectors["onnx"].iterdir()) == ["metadata.json", "model.onnx"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in detectors["onnx"].iterdir()}
    assert modes["metadata.json"] == modes["model.onnx"] == 0o666 & ~current_umask()  # as open() makes files
    assert meta["input"]["shape"] == [1, 28, 28] and meta["input"]["channels"] == 1
    assert meta["class_names"][3] == "3 - three" and len(meta["class_names"]) == 10  # torchvision's label names
    assert meta["model"]["checkpoint_sha256"] == hashlib.sha256(open(detectors["ae"], "rb").read()).hexdigest()
    assert meta["threshold_from"]["normal_classes"] == [3] and meta["threshold_from"]["percentile"] == 95.0
    # the oracle: the model's reconstruction error of digit 3's validation images, numpy's percentile
    model = common.load_model(detectors["ae"], "cpu")
    dm = common.mnist_data(str(tiny_data), classes=[3], val_size=100)
    val, labels = common.images_and_labels(dm, "val", "cpu")
    assert set(labels.tolist()) == {3} and meta["threshold_from"]["images"] == len(val)
    with torch.no_grad():
        errors = (model.reconstruct(val) - val).pow(2).flatten(1).mean(1).numpy()
    assert meta["threshold"] == pytest.approx(np.percentile(errors, 95), rel=1e-5)
    assert max(meta["check"]["max_abs_difference"].values()) <= 1e-4


def test_score_gives_the_pytorch_model_s_scores_for_image_files_and_decides_at_the_threshold(
    detectors, tiny_data, tmp_path, capsys
):
    dm = common.mnist_data(str(tiny_data), val_size=100)
    images, labels = dm.split_tensors("test")
    paths = write_pngs(tmp_path / "new" / "digits", images[:40].numpy())
    out = tmp_path / "scores.csv"
    aelight(["score", "--model", str(detectors["onnx"]), str(tmp_path / "new"), paths[0], "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,anomalous" and len(lines) == 42  # a folder's 40 and one file again
    rows = [line.rsplit(",", 2) for line in lines[1:]]
    assert [r[0] for r in rows[:40]] == paths and rows[40][0] == paths[0]
    model = common.load_model(detectors["ae"], "cpu")
    x = images[:40].unsqueeze(1).float() / 255
    with torch.no_grad():
        expected = model.anomaly_score(x).numpy()
    scores = np.array([float(r[1]) for r in rows[:40]])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    threshold = json.loads((detectors["onnx"] / "metadata.json").read_text())["threshold"]
    assert [int(r[2]) for r in rows[:40]] == [int(s > threshold) for s in scores]
    assert "anomalous: " in capsys.readouterr().out


def test_score_imports_neither_torch_nor_lightning(detectors, tiny_data, tmp_path):
    dm = common.mnist_data(str(tiny_data), val_size=100)
    paths = write_pngs(tmp_path / "few", dm.split_tensors("test")[0][:3].numpy())
    probe = (
        "import sys; from aelight.commands import main; main(sys.argv[1:]); "
        "print('heavy:', sorted(m for m in ('torch', 'lightning', 'aelight.models') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe, "score", "--model", str(detectors["onnx"]), *paths],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "heavy: []" and len(done.stdout.splitlines()) == 5


def test_a_torchscript_export_scores_like_the_onnx_one(detectors, tiny_data, tmp_path, capsys):
    out = tmp_path / "ts"
    aelight(["export", "--ckpt_path", detectors["ae"], f"--data.data_dir={tiny_data}", "--out", str(out),
             "--format", "torchscript"])  # fmt: skip
    assert json.loads((out / "metadata.json").read_text())["model_file"] == "model.pt"
    images = common.mnist_data(str(tiny_data), val_size=100).split_tensors("test")[0][:5]
    paths = write_pngs(tmp_path / "some", images.numpy())
    capsys.readouterr()
    aelight(["score", "--model", str(out), *paths])
    torchscript = capsys.readouterr().out
    aelight(["score", "--model", str(detectors["onnx"]), *paths])
    onnx = capsys.readouterr().out
    pairs = zip(torchscript.splitlines()[1:], onnx.splitlines()[1:])
    assert all(abs(float(a.split(",")[1]) - float(b.split(",")[1])) < 1e-5 for a, b in pairs)


def test_bad_images_and_folders_are_one_line_naming_the_file(detectors, tmp_path, capsys):
    model = str(detectors["onnx"])
    good = write_pngs(tmp_path / "good", np.zeros((1, 28, 28), np.uint8))[0]
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "colour.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "large.png")
    (tmp_path / "broken.png").write_bytes(open(good, "rb").read()[:30])  # a truncated PNG
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "scores.csv"
    for path, says in (
        (tmp_path / "large.png", "32x32 pixels; the model takes 28x28"),
        (tmp_path / "broken.png", "not a readable image"),
        (tmp_path / "notes.txt", "not an image file"),
        (tmp_path / "empty", "no image files there"),
        (tmp_path / "missing.png", "no such file or folder"),
    ):
        err = fails_with(capsys, "score", "--model", model, good, str(path), "--out", str(out))
        assert f"{path}: {says}" in err, err
        assert not out.exists()  # every image is checked before anything is written
    err = fails_with(capsys, "score", "--model", str(tmp_path / "good"), good)
    assert f"--model {tmp_path / 'good'}: no metadata.json there" in err
    # a folder holding a file that is not an image: named, as training names it (it was skipped silently)
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    err = fails_with(capsys, "score", "--model", model, str(tmp_path / "good"))
    assert f"{tmp_path / 'good' / 'notes.txt'}: not an image file" in err and "move it out" in err


def test_score_reads_images_as_training_did_converting_colour_to_the_model_s_channels(detectors, tmp_path, capsys):
    # training converts an RGB image of a grayscale folder; score refused the same files
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    colour = np.repeat(gray[..., None], 3, axis=-1)  # the same pixels in three equal channels
    paths = write_pngs(tmp_path / "gray", gray) + write_pngs(tmp_path / "colour", colour)
    aelight(["score", "--model", str(detectors["onnx"]), *paths])
    scores = [line.split(",")[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(scores) == 6 and scores[:3] == scores[3:]


def test_exports_that_cannot_hold_are_one_line_and_write_nothing(detectors, tiny_data, tmp_path, capsys, monkeypatch):
    data = f"--data.data_dir={tiny_data}"
    err = fails_with(capsys, "export", "--ckpt_path", detectors["vae"], data, "--out", str(tmp_path / "vae"))
    assert "VAE's anomaly score is drawn at random" in err and not (tmp_path / "vae").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    err = fails_with(capsys, "export", "--ckpt_path", detectors["ae"], data, "--out", str(tmp_path / "mine"))
    assert "exists and is not an export folder of aelight" in err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["keep.txt"]
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # a runtime that disagrees with PyTorch
    err = fails_with(capsys, "export", "--ckpt_path", detectors["ae"], data, "--out", str(tmp_path / "off"))
    assert "export check failed: onnxruntime" in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no folder, no temporary left


def test_the_one_class_recipe_s_model_exports_with_its_turned_views_and_normal_neighbours(tiny_data, tmp_path):
    aelight(["fit", "--config=configs/anomaly/restoration.yaml", "--data.classes=[3]",
             *short_run_args(tiny_data, tmp_path / "logs", epochs=1, batches=1)])  # fmt: skip
    (ckpt,) = glob.glob(str(tmp_path / "logs" / "restorationae" / "version_0" / "checkpoints" / "best.ckpt"))
    out = tmp_path / "detector"
    aelight(["export", "--ckpt_path", ckpt, f"--data.data_dir={tiny_data}", "--out", str(out)])
    meta = json.loads((out / "metadata.json").read_text())  # written only after onnxruntime agreed with PyTorch
    assert "20 nearest normal codes" in meta["score"] and meta["model"]["class"] == "aelight.models.RestorationAE"
    assert max(meta["check"]["max_abs_difference"].values()) <= 1e-4
