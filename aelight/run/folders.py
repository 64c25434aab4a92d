"""The run folder: the one place that knows where a run's files go, and how a folder is claimed.

    <save_dir>/<name>/version_N/          one run: ``aelight fit``, then the validate / test /
        config.yaml, config_<command>.yaml    predict of its checkpoints, which log into it
        result.json, result_<command>.json
        checkpoints/best.ckpt, last.ckpt
        apps/<report>/                    an application's report on one of its checkpoints

Plain Python (no torch, no Lightning): the sweep reads runs with it."""

import os
import re
from pathlib import Path
from typing import Optional

from aelight import safe_files
from aelight.errors import AelightError
from aelight.runtime import is_higher_rank

CHECKPOINTS = "checkpoints"
APPS = "apps"
RUN_CONFIG = "config.yaml"  # what ``fit`` ran with, seed included
CKPT_ALIASES = ("best", "last")  # ``--ckpt_path best``: the newest run's best.ckpt of the experiment
VERSION = re.compile(r"version_(\d+)")
# The run folder rank 0 claimed, for the other processes of a DDP run that Lightning starts with
# the same command line (they must log into the same folder, not claim their own).
RUN_VERSION_ENV = "AELIGHT_RUN_VERSION"
WRITABLE_HINT = "choose another with --trainer.logger.init_args.save_dir DIR"


def run_root(save_dir: str, name: str) -> str:
    """The experiment's folder, holding its runs' ``version_N`` folders."""
    return os.path.join(save_dir, name)


def version_folder(root: str, version) -> str:
    """A run's folder: ``version_N``, or the name a user gave as ``--trainer.logger.init_args.version``."""
    return os.path.join(root, version if isinstance(version, str) else f"version_{version}")


def checkpoint_file(run_folder, which: str) -> Path:
    """``best`` or ``last``: that checkpoint's path in a run folder."""
    return Path(run_folder) / CHECKPOINTS / f"{which}.ckpt"


def run_folder_of(ckpt) -> Optional[Path]:
    """The run folder of a checkpoint at ``<run>/checkpoints/x.ckpt``, or None for a file elsewhere."""
    path = Path(ckpt).resolve()
    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def run_config_of(ckpt) -> Path:
    """The config the checkpoint's run was fitted with (it may be missing)."""
    return Path(ckpt).resolve().parent.parent / RUN_CONFIG


def report_folder(ckpt: Optional[str], name: str, out: Optional[str]) -> Path:
    """An application's report folder: ``out`` if given, else ``<run>/apps/<name>`` for a run's
    checkpoint, else ``lightning_logs/apps/<name>``."""
    if out:
        return Path(out)
    run = run_folder_of(ckpt) if ckpt else None
    return (run if run is not None else Path("lightning_logs")) / APPS / name


def version_number(ckpt_path: str) -> int:
    """N of ``.../version_N/checkpoints/x.ckpt``, or -1."""
    match = re.search(r"version_(\d+)[/\\]checkpoints[/\\][^/\\]+$", str(ckpt_path))
    return int(match.group(1)) if match else -1


def newest_checkpoint(root, which: str) -> Optional[Path]:
    """The newest run's ``which`` checkpoint (best or last) under an experiment's folder, or None."""
    found = list(Path(root).glob(f"version_*/{CHECKPOINTS}/{which}.ckpt"))
    return max(found, key=lambda p: version_number(str(p))) if found else None


def resolve_checkpoint(ckpt_path: str, root: Optional[str]) -> tuple[str, Optional[int]]:
    """``--ckpt_path``: ``best`` / ``last`` become the newest such checkpoint under ``root`` (the
    experiment's folder; None without a TensorBoard logger), and the run version to log into when
    the file is one of that experiment's runs (so a resumed run continues its own logs)."""
    if root is None:
        if ckpt_path in CKPT_ALIASES:
            raise AelightError(f"--ckpt_path {ckpt_path} needs the TensorBoard logger to find runs; give a file")
        return ckpt_path, None
    if ckpt_path in CKPT_ALIASES:
        found = newest_checkpoint(root, ckpt_path)
        if found is None:
            raise AelightError(
                f"--ckpt_path {ckpt_path}: no {ckpt_path}.ckpt under {root}/version_*/{CHECKPOINTS}/; "
                "train first with `aelight fit --config ...` (same config), or give a checkpoint file"
            )
        ckpt_path = str(found)
    if not os.path.isfile(ckpt_path):
        raise AelightError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    version = version_number(ckpt_path)
    if version >= 0 and os.path.isdir(root):
        experiment = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path))))
        if os.path.samefile(experiment, root):
            return ckpt_path, version
    return ckpt_path, None


def next_version(root: str) -> int:
    """One more than the highest ``version_N`` folder under ``root`` (0 when there is none)."""
    names = os.listdir(root) if os.path.isdir(root) else []
    return max((int(m.group(1)) for d in names if (m := VERSION.fullmatch(d))), default=-1) + 1


def claim_version(root: str) -> tuple[int, Optional[str]]:
    """Claims the next free ``version_N`` folder under ``root`` with an exclusive ``mkdir``: of
    several runs started at once, each gets its own. Returns the version and the folder created
    (None when this process created none). Processes of a DDP run other than rank 0 take the one
    rank 0 claimed and create nothing."""
    if is_higher_rank():
        if os.environ.get(RUN_VERSION_ENV):  # a process Lightning started beside rank 0
            return int(os.environ[RUN_VERSION_ENV]), None
        # a process started on another node (NODE_RANK > 0) cannot know rank 0's claim; it writes no
        # file of the run (its checkpoint folder is rank 0's, broadcast by Lightning), so it claims none
        return next_version(root), None
    try:
        os.makedirs(root, exist_ok=True)
        version = next_version(root)
        while True:
            try:
                os.mkdir(version_folder(root, version))
                break
            except FileExistsError:  # another run took it first
                version += 1
    except OSError as err:
        reason = f"output folder {root} is not writable ({err.strerror}); {WRITABLE_HINT}"
        raise safe_files.OutputError(reason) from None
    os.environ[RUN_VERSION_ENV] = str(version)  # inherited by the DDP processes Lightning starts
    return version, version_folder(root, version)
