"""Checkpoint files that are never left half-written, and loading that names what is wrong.

Saving writes a temporary file beside the target, fsyncs it and renames it over the final name,
so a process killed at any moment leaves either the old checkpoint or the new one, never a torn
file under a final name. Loading is weights-only by default (set by the CLI): a checkpoint that
carries pickled objects (code that would run on load) is refused.
"""

import os
import pickle
import tempfile
from typing import Any, Callable, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelight.errors import AelightError


class CheckpointError(AelightError):
    """A checkpoint file is missing, truncated, corrupt or unsafe to load."""


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = str(path)
        if "://" in path:  # remote filesystems: Lightning's own (fsspec transaction) path
            return super().save_checkpoint(checkpoint, path, storage_options)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    def load_checkpoint(
        self, path, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist") from None
        except pickle.UnpicklingError as err:
            if "Weights only load failed" in str(err):
                raise CheckpointError(
                    f"checkpoint {path} refused: it carries pickled Python objects (code that would run on load) "
                    "and checkpoints are loaded weights-only. Load it with --weights_only false only if you "
                    "trust where it came from."
                ) from None
            raise CheckpointError(f"checkpoint {path} is corrupt ({err})") from None
        except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({str(err).splitlines()[0]})") from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
        return checkpoint
