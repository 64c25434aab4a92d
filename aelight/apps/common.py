"""What every application command shares: its options, encoding a split, writing the report. The
checkpoint's model and data come from the run layer (``aelight.run.models``, ``aelight.run.run_data``),
as for every command."""

import argparse
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from aelight import run_result, safe_files
from aelight.data.base import ImageDataModule
from aelight.errors import AelightError  # noqa: F401 - re-exported for the commands
from aelight.run.application import add_data_options, check_device, run_main  # noqa: F401 - the commands'
from aelight.run.models import load_model, load_run, load_untrained  # noqa: F401 - the commands'
from aelight.run.recording import record_report
from aelight.run.run_data import batched, images_and_labels, is_folder_run, mnist_data, run_data  # noqa: F401


def application_parser(
    name: str, description: str, writes: str, checkpoint: bool = True, data: bool = True
) -> argparse.ArgumentParser:
    """The options every application shares, spelt as in ``aelight fit`` (``--ckpt_path``,
    ``--data.data_dir``); ``writes`` (what the command writes) ends its ``--help``."""
    parser = argparse.ArgumentParser(
        prog=f"aelight {name}",
        allow_abbrev=False,  # an abbreviated option is refused, as by aelight fit
        description=description,
        epilog=f"Writes {writes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if checkpoint:
        parser.add_argument(
            "--ckpt_path", required=True, help="a checkpoint written by `aelight fit` (best.ckpt or last.ckpt)"
        )
    if data:
        add_data_options(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    default = f"<run>/apps/{name}/, beside the checkpoint's folder" if checkpoint else f"lightning_logs/apps/{name}/"
    parser.add_argument("--out", default=None, help=f"report folder (default: {default})")
    return parser


def full_training_set(dm: ImageDataModule, device: str) -> tuple[Tensor, Tensor]:
    """Every training image: the train and validation splits (MNIST's 60,000)."""
    xs, ys = zip(*(images_and_labels(dm, s, device) for s in ("train", "val")))
    return torch.cat(xs), torch.cat(ys)


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
    record_report(folder, path, run_result.numbers(report))
    print(json.dumps(report, indent=2))
    print(f"report and figures written to {folder}")
    return path


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
