"""``aelight export``: a trained checkpoint as a self-contained anomaly detector.

    aelight export --ckpt_path lightning_logs/anomaly_digit3/version_0/checkpoints/best.ckpt \\
        --data.data_dir data/ --out detector/

The folder gets ``model.onnx`` (input ``images``: a batch of float images in [0, 1] as the data
module serves them, any batch size; outputs ``reconstruction`` and ``score``, the per-image anomaly
score) and ``metadata.json``: the input's shape and pixel scaling, the class names, the threshold
(a percentile of the scores of the held-out normal validation images of the checkpoint's own run,
never test images), aelight's version and the checkpoint's SHA-256. ``--format torchscript`` writes
``model.pt`` instead. The export checks itself before anything is written under ``--out``: the
runtime's outputs (onnxruntime's, or the loaded TorchScript module's) must match PyTorch's within
1e-4 on a validation batch.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from aelight import safe_files
from aelight.arg_types import number
from aelight.checkpoints import trust
from aelight.components.deskew import deskewed
from aelight.data import ImageFolderDataModule
from aelight.deploy import detector
from aelight.deploy.detector import DetectorError
from aelight.run.application import add_data_options, run_main
from aelight.run.models import load_model
from aelight.run.run_data import batched, images_and_labels, is_folder_run, mnist_data, run_data
from aelight.training.lightning_compat import jit_tracing

TOLERANCE = 1e-4  # largest difference allowed between the runtime's outputs and PyTorch's
CHECK_IMAGES = 256  # validation images the export is checked on
# The run's data settings that define the normal validation images and the pixels the model reads.
DATA_SETTINGS = ("dataset", "classes", "val_size", "split_seed", "deskew")


class Detector(nn.Module):
    """The exported graph: images in [0, 1] -> (reconstruction, per-image anomaly score); images
    deskewed first when the model was trained on deskewed ones, so the detector takes raw images."""

    def __init__(self, model: nn.Module, deskew: bool):
        super().__init__()
        self.model, self.deskew = model, deskew

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = deskewed(images) if self.deskew else images
        return self.model.reconstruct(x), self.model.anomaly_score(x)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def scores_of(graph: Detector, images: Tensor) -> Tensor:
    return batched(lambda x: graph(x)[1], images).float()


def check_deterministic(graph: Detector, images: Tensor, model_name: str) -> None:
    """A detector's score must be a function of the image: a score drawn at random (a VAE's
    posterior samples) has no fixed threshold and no runtime can reproduce it."""
    first = scores_of(graph, images)
    torch.manual_seed(1)
    if not torch.equal(first, scores_of(graph, images)):
        raise DetectorError(
            f"{model_name}'s anomaly score is drawn at random (it samples), so it has no score a "
            "deployed detector can reproduce; export a model with a deterministic score (AE, WTAAE, "
            "RestorationAE, the denoising and sparse AEs)"
        )


def export_onnx(graph: Detector, example: Tensor, path: str) -> None:
    """ONNX with a dynamic batch size: torch.onnx's TorchScript-based exporter, which takes every
    aelight model as it is (the torch.export-based one, tried second, stops at data-dependent
    shapes such as RestorationAE's nearest-neighbour search)."""
    names = {"input_names": [detector.INPUT], "output_names": list(detector.OUTPUTS)}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        try:
            axes = {name: {0: "batch"} for name in (detector.INPUT, *detector.OUTPUTS)}
            torch.onnx.export(graph, (example,), path, dynamo=False, dynamic_axes=axes, **names)
        except Exception:  # noqa: BLE001 - the other exporter may still take it
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(graph, (example,), path, dynamo=True, dynamic_shapes=({0: batch},), **names)


def export_torchscript(graph: Detector, example: Tensor, path: str) -> None:
    with warnings.catch_warnings(), jit_tracing():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(graph, example, check_trace=False), path)


def runtime_outputs(fmt: str, path: str, images: Tensor) -> tuple[np.ndarray, np.ndarray, str]:
    """The saved file's outputs on ``images``, run as a deployment runs it, and the runtime's name."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        reconstruction, score = session.run(list(detector.OUTPUTS), {detector.INPUT: images.numpy()})
        return reconstruction, score, f"onnxruntime {onnxruntime.__version__}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        module = torch.jit.load(path)
    with torch.no_grad():
        reconstruction, score = module(images)
    return reconstruction.numpy(), score.numpy(), f"torch.jit {torch.__version__}"


def check_outputs(graph: Detector, fmt: str, path: str, images: Tensor) -> dict:
    """The runtime's outputs against PyTorch's on ``images``: within ``TOLERANCE``, or one line."""
    with torch.no_grad():
        expected = [t.float().numpy() for t in graph(images)]
    got = runtime_outputs(fmt, path, images)
    differences = {}
    for name, want, have in zip(detector.OUTPUTS, expected, got[:2]):
        if have.shape != want.shape:
            raise DetectorError(f"export check failed: {got[2]} gives {name} of shape {list(have.shape)}, "
                                f"PyTorch {list(want.shape)}; nothing was written")  # fmt: skip
        differences[name] = float(np.abs(have.astype(np.float64) - want).max())
        if not differences[name] <= TOLERANCE:
            raise DetectorError(
                f"export check failed: {got[2]}'s {name} differs from PyTorch's by {differences[name]:.3g} "
                f"(tolerance {TOLERANCE:g}) on {len(images)} validation images; nothing was written"
            )
    return {"images": len(images), "runtime": got[2], "max_abs_difference": differences, "tolerance": TOLERANCE}


def replace_folder(built: str, out: Path) -> None:
    """Puts the finished export folder ``built`` at ``out``; a previous export there is replaced
    whole, anything else is left alone."""
    check_out(out)
    if out.exists():
        old = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)
        os.replace(out, os.path.join(old, "export"))
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out)


def check_out(out: Path) -> None:
    """Before any work: ``--out`` must be new, empty or a previous export, in a writable folder."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / detector.METADATA).exists())):
        raise DetectorError(
            f"--out {out}: exists and is not an export folder of aelight; choose another --out or empty it"
        )
    safe_files.check_writable(out.parent, "choose another --out")


def detector_data(checkpoint: dict, args):
    """The data module of the checkpoint's run, serving raw pixels (a detector trained on deskewed
    MNIST deskews them itself, inside the graph), and whether it deskews."""
    trained = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if is_folder_run(trained):
        return run_data(trained, args.data_dir, args.root), False
    settings = {k: trained[k] for k in DATA_SETTINGS if k in trained}
    deskew = bool(settings.pop("deskew", False))
    if args.val_size is not None:
        settings["val_size"] = args.val_size
    return mnist_data(args.data_dir, **settings), deskew


def threshold_data(dm) -> dict:
    """Which images the threshold's normal validation images came from."""
    if isinstance(dm, ImageFolderDataModule):
        return {"dataset": "image folder", "root": os.path.abspath(dm.root), "normal_classes": [dm.class_names[0]]}
    return {"dataset": dm.dataset, "normal_classes": dm.classes if dm.classes is not None else list(range(10))}


def run(args) -> dict:
    out = Path(args.out)
    check_out(out)
    checkpoint = trust.load_checkpoint(args.ckpt_path)
    model = load_model(args.ckpt_path, "cpu", checkpoint)
    dm, deskew = detector_data(checkpoint, args)
    val = images_and_labels(dm, "val", "cpu")[0]  # the normal images held out of training
    model.fit_scorer(images_and_labels(dm, "train", "cpu")[0], val)
    graph = Detector(model, deskew).eval()
    model_name = type(model).__name__
    check_deterministic(graph, val[:CHECK_IMAGES], model_name)
    threshold = torch.quantile(scores_of(graph, val), args.percentile / 100).item()

    built = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        model_file = os.path.join(built, detector.MODEL_FILES[args.format])
        try:
            (export_onnx if args.format == "onnx" else export_torchscript)(graph, val[:2].clone(), model_file)
        except Exception as err:  # noqa: BLE001 - an exporter fails in many ways; one line says which model
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DetectorError(f"{model_name} could not be exported as {args.format}: {first[:300]}") from None
        check = check_outputs(graph, args.format, model_file, val[:CHECK_IMAGES])
        channels, height, width = val.shape[1:]
        meta = {
            "schema": detector.SCHEMA,
            "format": args.format,
            "model_file": detector.MODEL_FILES[args.format],
            "input": {
                "name": detector.INPUT,
                "shape": [channels, height, width],
                "channels": channels,
                "color": "grayscale" if channels == 1 else "rgb",
                "dtype": "float32",
                "pixel_scaling": "value / 255: pixels in [0, 1]",
                # how a file becomes the input (Pillow, bilinear; [height, width]), as in training
                "resize": list(dm.resize) if getattr(dm, "resize", None) else None,
                "center_crop": list(dm.center_crop) if getattr(dm, "center_crop", None) else None,
                "deskew": deskew,  # applied inside the graph: give raw images
            },
            "outputs": {"reconstruction": [channels, height, width], "score": "one number per image"},
            "score": model.anomaly_score_name,
            "threshold": threshold,
            "threshold_from": {
                "percentile": args.percentile,
                "split": "validation (normal images held out of training)",
                "images": len(val),
                **threshold_data(dm),
                "split_seed": dm.split_seed,
            },
            "class_names": dm.class_names,
            "model": {
                "class": checkpoint.get("hyper_parameters", {}).get("_class_path", "aelight.models.AE"),
                "checkpoint": str(Path(args.ckpt_path).resolve()),
                "checkpoint_sha256": sha256(args.ckpt_path),
            },
            "check": check,
            "versions": {name: package_metadata.version(name) for name in ("aelight", "torch")},
        }
        safe_files.write_text(os.path.join(built, detector.METADATA), json.dumps(meta, indent=2) + "\n", "metadata")
        replace_folder(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    print(f"exported {model_name} to {out}/ ({meta['model_file']}, threshold {threshold:.6g} at the "
          f"{args.percentile:g}th percentile of {len(val)} validation images; {check['runtime']} matches "
          f"PyTorch within {max(check['max_abs_difference'].values()):.2g})")  # fmt: skip
    return meta


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aelight export",
        allow_abbrev=False,
        description="A trained checkpoint as a deployable anomaly detector: the model with its\n"
        "per-image anomaly score, and the threshold chosen on the run's normal validation images.",
        epilog="Writes model.onnx (or model.pt with --format torchscript) and metadata.json (input\n"
        "shape and pixel scaling, class names, threshold and where it came from, aelight version,\n"
        "the checkpoint's SHA-256) into --out DIR, after checking the runtime's outputs against\n"
        "PyTorch's. Apply it with: aelight score --model DIR IMAGES...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by `aelight fit`")
    parser.add_argument("--out", required=True, help="the export folder (a previous export there is replaced)")
    parser.add_argument("--format", choices=sorted(detector.MODEL_FILES), default="onnx", help="file format")
    add_data_options(parser, val_size=None, deskew=False)  # the run's pixels: its own deskew setting
    parser.add_argument(
        "--percentile", type=number(float, minimum=0, maximum=100), default=95.0,
        help="threshold: this percentile (0-100) of the normal validation images' scores",
    )  # fmt: skip
    parser.set_defaults(device="cpu")  # exported on the CPU: the file runs anywhere
    return parser


def main(argv=None) -> None:
    run_main(run, parser(), argv)
