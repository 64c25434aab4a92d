"""What every application command shares: loading a trained model, encoding a split, writing the report."""

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from aelight.checkpoint_io import SafeCheckpointIO
from aelight.data import MNISTDataModule
from aelight.data.device_batches import to_float_images
from aelight.errors import AelightError  # noqa: F401 - re-exported for the commands
from aelight.models import AE


def base_parser(description: str, checkpoint: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if checkpoint:
        parser.add_argument(
            "--ckpt", required=True, help="a checkpoint written by `aelight fit` (best.ckpt or last.ckpt)"
        )
    parser.add_argument("--data-dir", default="data/", help="folder holding MNIST/raw")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="report folder (default: <run>/apps/<command>/)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation split of the official training set")
    return parser


def run_main(fn: Callable[[argparse.Namespace], dict], parser: argparse.ArgumentParser, argv=None, forward=False):
    """Parse, run; user errors become one message and exit code 1. With ``forward``, options the
    parser does not know are kept in ``args.override`` (passed on to the aelight CLI)."""
    if forward:
        args, args_override = parser.parse_known_args(argv)
        args.override = args_override
    else:
        args = parser.parse_args(argv)
    try:
        fn(args)
    except AelightError as err:
        print(f"aelight: error: {err}", file=sys.stderr)
        sys.exit(1)


def load_model(ckpt: str, device: str) -> AE:
    """Any aelight model from a checkpoint of `aelight fit` (its class and networks come from the file)."""
    checkpoint = SafeCheckpointIO().load_checkpoint(ckpt, map_location="cpu", weights_only=True)  # clear errors first
    model_class = model_class_of(checkpoint, ckpt)
    try:
        model = model_class.load_from_checkpoint(ckpt, map_location=device, weights_only=True)
    except (TypeError, ValueError) as err:  # its arguments do not fit this version's model class
        lines = str(err).splitlines()
        reason = next((line.strip(" -") for line in lines if "argument" in line), lines[0] if lines else "")
        raise AelightError(
            f"checkpoint {ckpt} does not fit this version of aelight's {model_class.__name__} ({reason}); "
            "load it with the aelight version that wrote it"
        ) from None
    return model.eval().to(device)


def model_class_of(checkpoint: dict, ckpt: str) -> type:
    """The aelight model class a checkpoint names (Lightning, loading through the base class, would
    drop the class path and build a plain AE). Only classes of aelight are accepted: importing a
    module that a file names could run code."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path", "aelight.models.AE")
    module_name, _, name = class_path.rpartition(".")
    if module_name.split(".")[0] != "aelight":
        raise AelightError(f"{ckpt} names the model class {class_path!r}, which is not an aelight model")
    model_class = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, AE)):
        raise AelightError(f"{ckpt} names the model class {class_path!r}, which is not an aelight model")
    return model_class


def data(data_dir: str, **kw) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=data_dir, download=False, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def images_and_labels(dm: MNISTDataModule, split: str, device: str) -> tuple[Tensor, Tensor]:
    """A split as float images in [0, 1] (N, 1, 28, 28) and labels, on ``device``."""
    images, labels = dm.split_tensors(split)
    return to_float_images(images.to(device)), labels.to(device)


def full_training_set(dm: MNISTDataModule, device: str) -> tuple[Tensor, Tensor]:
    """All 60,000 official training images (train + validation splits)."""
    xs, ys = zip(*(images_and_labels(dm, s, device) for s in ("train", "val")))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 2000) -> Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(batch_size)])


def report_dir(ckpt: Optional[str], name: str, out: Optional[str]) -> Path:
    """``<run>/apps/<name>`` for a checkpoint at ``<run>/checkpoints/x.ckpt``, unless ``out`` is given."""
    if out:
        folder = Path(out)
    elif ckpt and Path(ckpt).resolve().parent.name == "checkpoints":
        folder = Path(ckpt).resolve().parent.parent / "apps" / name
    else:
        folder = Path("lightning_logs") / "apps" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AelightError(f"cannot create the report folder {folder}: {err.strerror}") from None
    return folder


def write_report(folder: Path, report: dict, figures: dict) -> Path:
    """Writes ``report.json``, each matplotlib figure as ``<name>.png``, and the figures to TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for name, fig in figures.items():
            fig.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
            writer.add_figure(f"apps/{folder.name}/{name}", fig)
        writer.add_text(f"apps/{folder.name}/report", "```\n" + json.dumps(report, indent=2) + "\n```")
    path = folder / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"report and figures written to {folder}")
    return path


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
