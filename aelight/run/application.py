"""What every command outside training shares: the data options (one definition, for the
applications and ``aelight export``), the device check, the report folder and its result.json,
and one-line errors."""

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from aelight import safe_files
from aelight.arg_types import never_download, number, true_or_false
from aelight.errors import AelightError, one_line_errors
from aelight.run.folders import report_folder
from aelight.run.recording import record_report


def add_data_options(parser: argparse.ArgumentParser, val_size: Optional[int] = 5000, deskew: bool = True) -> None:
    """The ``--data.*`` options of a command that reads a checkpoint's data (MNIST or its run's image
    folder), spelt as in ``aelight fit``. ``val_size``: the default validation split (None: the
    checkpoint's run's)."""
    parser.add_argument("--data.data_dir", dest="data_dir", default="data/", help="folder holding MNIST/raw")
    parser.add_argument(
        "--data.download", dest="download", type=never_download, default=False,
        help="as in aelight fit; only false here: the data were fetched by the fit that trained the checkpoint",
    )  # fmt: skip
    parser.add_argument(
        "--data.val_size",
        dest="val_size",
        type=number(int, minimum=1),
        default=val_size,
        help="validation split of the training set"
        + (" (default: the checkpoint's run's)" if val_size is None else ""),
    )
    parser.add_argument(
        "--data.root", dest="root", default=None,
        help="for a run on a folder of images: read them from here (default: the folder it trained on)",
    )  # fmt: skip
    if deskew:
        parser.add_argument(
            "--data.deskew", dest="deskew", type=true_or_false, default=None,
            help="MNIST deskewed (true) or raw (false): a baseline's inputs (default false); a checkpoint's "
            "images are served as its run's were, so with --ckpt_path it may only repeat that run's setting",
        )  # fmt: skip


def check_device(device: str) -> None:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise AelightError(f"--device {device}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AelightError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AelightError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")


def prepare_report_dir(folder: Path) -> Path:
    """The report folder created and checked writable (one clear error otherwise), before the
    command does any work."""
    safe_files.check_writable(folder, "choose another with --out DIR")
    safe_files.remove_stale_temporaries(folder)  # left by a command killed while writing its report
    return folder


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
    ``forward``, options the parser does not know are kept in ``args.override`` (passed on to
    ``aelight fit``)."""
    if forward:
        args, override = parser.parse_known_args(argv)
        args.override = override
    else:
        args = parser.parse_args(argv)
    created: list[Path] = []  # report folders this command made, innermost first

    def remove_created() -> None:  # a command that failed leaves no empty report folder behind
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()

    with one_line_errors(cleanup=remove_created):
        check_device(args.device)
        if report:
            name = report(args) if callable(report) else report
            folder = report_folder(getattr(args, "ckpt_path", None), name, args.out)
            created = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]
            args.report_folder = prepare_report_dir(folder)
            record_report(args.report_folder)
        fn(args)
