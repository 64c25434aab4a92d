"""The ``aelight-<command>`` console scripts of earlier releases: each runs ``aelight <command>``,
accepting the old option spellings (``--ckpt``, ``--data-dir``, ``--val-size``, ``--max-iter``…)."""

import re
import sys
from typing import Optional

from aelight.commands import APPLICATIONS

# Old spellings that are not just dashes for underscores.
RENAMED = {
    "--ckpt": "--ckpt_path",
    "--baseline-ckpt": "--baseline_ckpt_path",
    "--data-dir": "--data.data_dir",
    "--val-size": "--data.val_size",
    "--save-dir": "--trainer.logger.init_args.save_dir",  # aelight-anomaly's training runs
    "--epochs": "--trainer.max_epochs",  # aelight-anomaly's training runs
}


def respell(argv: list) -> list:
    """Old options in today's spelling: renamed ones, and dashes to underscores (``--max-iter`` ->
    ``--max_iter``); values, and the dotted training options anomaly passes on, are kept."""
    spelt = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if re.fullmatch(r"--[a-z]+(-[a-z]+)*", name):
            name = RENAMED.get(name, "--" + name[2:].replace("-", "_"))
        spelt.append(name + eq + value)
    return spelt


def _alias(command: str):
    def main(argv: Optional[list] = None) -> None:
        from aelight.commands import main as aelight

        aelight([command, *respell(sys.argv[1:] if argv is None else list(argv))])

    main.__doc__ = f"``aelight-{command}``: ``aelight {command}`` with the old option spellings."
    return main


reduce, features, anomaly, generate, denoise, nll = (_alias(command) for command in APPLICATIONS)
