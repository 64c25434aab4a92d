"""What every application command shares: loading a trained model, encoding a split, writing the report."""

import argparse
import contextlib
import importlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from lightning.pytorch.cli import instantiate_module
from torch import Tensor

from aelight import run_result, safe_files
from aelight.arg_types import true_or_false, whole_number
from aelight.checkpoints import trust
from aelight.checkpoints.io import check_weights_fit, model_arguments, weight_shapes
from aelight.data import ImageFolderDataModule, MNISTDataModule
from aelight.data.base import ImageDataModule
from aelight.data.pixels import to_float_images
from aelight.errors import AelightError, exit_with_error, user_message  # noqa: F401 - AelightError re-exported for the commands
from aelight.models import AE


def application_parser(
    name: str, description: str, writes: str, checkpoint: bool = True, data: bool = True
) -> argparse.ArgumentParser:
    """The options every application shares, spelt as in ``aelight fit`` (``--ckpt_path``,
    ``--data.data_dir``); ``writes`` (what the command writes) ends its ``--help``."""
    parser = argparse.ArgumentParser(
        prog=f"aelight {name}",
        description=description,
        epilog=f"Writes {writes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if checkpoint:
        parser.add_argument(
            "--ckpt_path", required=True, help="a checkpoint written by `aelight fit` (best.ckpt or last.ckpt)"
        )
    if data:
        parser.add_argument("--data.data_dir", dest="data_dir", default="data/", help="folder holding MNIST/raw")
        parser.add_argument(
            "--data.val_size", dest="val_size", type=int, default=5000, help="validation split of the training set"
        )
        parser.add_argument(
            "--data.root", dest="root", default=None,
            help="for a run on a folder of images: read them from here (default: the folder it trained on)",
        )  # fmt: skip
        parser.add_argument(
            "--data.deskew", dest="deskew", type=true_or_false, default=None,
            help="MNIST deskewed (true) or raw (false): a baseline's inputs (default false); a checkpoint's "
            "images are served as its run's were, so with --ckpt_path it may only repeat that run's setting",
        )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    default = f"<run>/apps/{name}/, beside the checkpoint's folder" if checkpoint else f"lightning_logs/apps/{name}/"
    parser.add_argument("--out", default=None, help=f"report folder (default: {default})")
    return parser


positive_int = whole_number(1)  # argparse type: an integer of at least 1


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def run_main(
    fn: Callable[[argparse.Namespace], dict],
    parser: argparse.ArgumentParser,
    argv=None,
    forward=False,
    report: Union[str, Callable[[argparse.Namespace], str], None] = None,
):
    """Parse, check, run; user errors become one message and exit code 1. Before any work the device
    must exist and, with ``report`` (the report folder's name, or a function of the options that
    gives it), the report folder must be writable: it is then ``args.report_folder``. With
    ``forward``, options the parser does not know are kept in
    ``args.override`` (passed on to the aelight CLI)."""
    if forward:
        args, args_override = parser.parse_known_args(argv)
        args.override = args_override
    else:
        args = parser.parse_args(argv)
    created: list[Path] = []  # report folders this command made, innermost first
    try:
        check_device(args.device)
        if report:
            name = report(args) if callable(report) else report
            folder = report_dir_path(getattr(args, "ckpt_path", None), name, args.out)
            created = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]
            args.report_folder = prepare_report_dir(folder)
            _record(folder=args.report_folder)
        fn(args)
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        for path in created:  # a command that failed leaves no empty report folder behind
            with contextlib.suppress(OSError):
                path.rmdir()
        exit_with_error(message)


def check_device(device: str) -> None:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise AelightError(f"--device {device}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AelightError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AelightError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")


def load_model(ckpt: str, device: str, checkpoint: Optional[dict] = None) -> AE:
    """Any aelight model from a checkpoint of `aelight fit` (its class and networks come from the file;
    ``checkpoint``: the file already loaded with ``trust.load_checkpoint``).

    The file is loaded weights-only and every class path it names is checked against
    ``aelight.checkpoints.trust``'s allow-list before anything it names is imported. Speed settings that old
    checkpoints kept among the model's arguments (now the training engine's) are left out."""
    checkpoint = checkpoint if checkpoint is not None else trust.load_checkpoint(ckpt)
    model = build_model(checkpoint, ckpt)
    check_weights_fit(model, weight_shapes(checkpoint["state_dict"]), f"checkpoint {ckpt}")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval().to(device)


def load_untrained(ckpt: str, device: str) -> tuple[AE, dict, int]:
    """A checkpoint's model at the initial weights its run started from: its networks built as the
    file says after seeding every generator with the run's seed (``seed_everything`` of the run's
    ``config.yaml``, beside its checkpoints folder), as ``aelight fit`` seeded them before building.
    Also the run's data settings (``load_run``) and its seed number."""
    import yaml
    from lightning.pytorch import seed_everything

    checkpoint = trust.load_checkpoint(ckpt)
    config_file = Path(ckpt).resolve().parent.parent / "config.yaml"
    try:
        seed = yaml.safe_load(config_file.read_text()).get("seed_everything")
    except (OSError, yaml.YAMLError, AttributeError):
        seed = None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AelightError(
            f"--untrained: no seed found in {config_file} (the run's saved config, whose seed_everything drew the "
            "initial weights); give the checkpoint of an `aelight fit` run whose folder holds config.yaml"
        )
    seed_everything(seed, verbose=False)
    model = build_model(checkpoint, ckpt)
    return model.eval().to(device), dict(checkpoint.get("datamodule_hyper_parameters") or {}), seed


def build_model(checkpoint: dict, ckpt: str) -> AE:
    """The model a checked checkpoint names, built from its arguments, its weights as initialised."""
    model_class = checkpoint_model_class(checkpoint, ckpt)
    hparams = checkpoint.get("hyper_parameters") or {}
    config = model_arguments(hparams)
    try:
        if "_instantiator" in hparams:  # written through the CLI: networks and optimizer as class paths
            return instantiate_module(model_class, config)
        return model_class(**{k: v for k, v in config.items() if k != "_class_path"})
    except Exception as err:  # noqa: BLE001 - its arguments do not fit this version's model class
        lines = str(err).splitlines()
        reason = next(
            (line.strip(" -") for line in lines if "argument" in line or "key" in line), lines[0] if lines else ""
        )
        raise AelightError(
            f"checkpoint {ckpt} does not fit this version of aelight's {model_class.__name__} ({reason}); "
            "load it with the aelight version that wrote it"
        ) from None


def checkpoint_model_class(checkpoint: dict, path) -> type:
    """The aelight model class a checked checkpoint names (the plain AE if it names none)."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path", "aelight.models.AE")
    cls = trust.allowed_class(class_path)
    if cls is None and trust.is_allowed(class_path):  # a user's trusted module
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, AE)):
        raise trust.UntrustedCheckpointError(
            f"checkpoint {path} names the model class {class_path!r}, not an aelight model"
        )
    return cls


# Data settings that change the pixels a model learnt from: an application gives a checkpoint's
# model its images as its training run did, as that run's data config (saved in the file) says.
PIXEL_SETTINGS = ("deskew",)
# What an image folder's run read, and how: an application reads the same images the same way.
FOLDER_SETTINGS = ("root", "channels", "resize", "center_crop", "val_fraction", "test_fraction", "split_seed",
                   "cache_dir", "cache")  # fmt: skip


def run_data_settings(checkpoint: dict, names: tuple[str, ...] = PIXEL_SETTINGS) -> dict:
    """The settings ``names`` of the data module of a checkpoint's run, those it recorded."""
    trained = checkpoint.get("datamodule_hyper_parameters") or {}
    return {k: trained[k] for k in names if k in trained}


def load_run(ckpt: str, device: str) -> tuple[AE, dict]:
    """A checkpoint's model (``load_model``) and its run's data settings (for ``run_data``), from
    one read of the file."""
    checkpoint = trust.load_checkpoint(ckpt)
    return load_model(ckpt, device, checkpoint), dict(checkpoint.get("datamodule_hyper_parameters") or {})


def is_folder_run(trained: dict) -> bool:
    """Whether a run's data settings (``load_run``) are those of an image folder."""
    return "root" in trained


def run_data(
    trained: dict, data_dir: str, root: Optional[str] = None, deskew: Optional[bool] = None, **mnist
) -> ImageDataModule:
    """The data of a checkpoint's run (``trained``: its data settings, from ``load_run``), set up:
    its image folder read as the run read it (from ``root`` if given, else where it trained), or
    MNIST from ``data_dir`` with the run's pixel settings and the options ``mnist``. ``deskew``
    (the command's ``--data.deskew``) may only repeat the run's own setting."""
    if deskew is not None and deskew != bool(trained.get("deskew", False)):
        raise AelightError(
            f"--data.deskew {str(deskew).lower()}: the checkpoint's run read "
            f"{'deskewed' if trained.get('deskew') else 'raw'} images, and its model is given the images it learnt "
            "from; leave --data.deskew out"
        )
    if not is_folder_run(trained):
        return data(data_dir, **{k: trained[k] for k in PIXEL_SETTINGS if k in trained}, **mnist)
    settings = {k: trained[k] for k in FOLDER_SETTINGS if k in trained}
    if root:
        settings["root"] = root
    dm = ImageFolderDataModule(**settings)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def data(data_dir: str, **kw) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=data_dir, download=False, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def images_and_labels(dm: ImageDataModule, split: str, device: str) -> tuple[Tensor, Tensor]:
    """A split as float images in [0, 1] (N, C, H, W) and labels, on ``device``."""
    images, labels = dm.split_tensors(split)
    return to_float_images(images.to(device)), labels.to(device)


def full_training_set(dm: ImageDataModule, device: str) -> tuple[Tensor, Tensor]:
    """Every training image: the train and validation splits (MNIST's 60,000)."""
    xs, ys = zip(*(images_and_labels(dm, s, device) for s in ("train", "val")))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 2000) -> Tensor:
    """``fn`` of ``x``, ``batch_size`` rows at a time, written into one preallocated result (a list
    of chunks then concatenated would hold wide outputs, such as 60,000 feature vectors, twice)."""
    out = None
    for start, chunk in zip(range(0, len(x), batch_size), x.split(batch_size)):
        result = fn(chunk)
        if out is None:
            out = result.new_empty((len(x), *result.shape[1:]))
        out[start : start + len(chunk)] = result
    return out if out is not None else fn(x)


def report_dir_path(ckpt: Optional[str], name: str, out: Optional[str]) -> Path:
    """``<run>/apps/<name>`` for a checkpoint at ``<run>/checkpoints/x.ckpt``, unless ``out`` is given."""
    if out:
        return Path(out)
    if ckpt and Path(ckpt).resolve().parent.name == "checkpoints":
        return Path(ckpt).resolve().parent.parent / "apps" / name
    return Path("lightning_logs") / "apps" / name


def prepare_report_dir(folder: Path) -> Path:
    """The report folder created and checked writable (one clear error otherwise), before the
    command does any work."""
    safe_files.check_writable(folder, "choose another with --out DIR")
    safe_files.remove_stale_temporaries(folder)  # left by a command killed while writing its report
    return folder


def write_report(folder: Path, report: dict, figures: dict) -> Path:
    """Writes ``report.json`` and each matplotlib figure as ``<name>.png`` (each atomically: a kill
    leaves the previous file or the new one), and the figures to TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for name, fig in figures.items():
            with safe_files.atomic_open(folder / f"{name}.png", "wb", what="figure") as f:
                fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
            writer.add_figure(f"apps/{folder.name}/{name}", fig)
        writer.add_text(f"apps/{folder.name}/report", "```\n" + json.dumps(report, indent=2) + "\n```")
    path = folder / "report.json"
    safe_files.write_text(path, json.dumps(report, indent=2) + "\n", what="report")
    _record(folder=folder, report=path, numbers=run_result.numbers(report))
    print(json.dumps(report, indent=2))
    print(f"report and figures written to {folder}")
    return path


def _record(folder: Path, report: Optional[Path] = None, numbers: Optional[dict] = None) -> None:
    """The report folder (where result.json goes), report.json and its numbers, into the command's result."""
    result = run_result.current()
    if result is None:
        return
    result.folder = str(Path(folder).absolute())
    if report is not None:
        result.report = str(Path(report).absolute())
        result.metrics["report"] = numbers or {}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
