"""Checkpoint files that are never left half-written, and loading that names what is wrong.

Saving goes through ``aelight.safe_files.atomic_open`` (a temporary file beside the target,
fsynced and renamed over the final name), so a process killed at any moment, or a full disk,
leaves either the old checkpoint or the new one, never a torn file under a final name. Loading is
weights-only by default (set by the CLI): a checkpoint that carries pickled objects (code that
would run on load) is refused; ``aelight.checkpoints.trust`` then checks the class paths it names.
"""

import os
import pickle
from typing import Any, Callable, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelight.errors import AelightError
from aelight.runtime import ctrl_c_deferred
from aelight.safe_files import atomic_open


class CheckpointError(AelightError):
    """A checkpoint file is missing, truncated, corrupt or unsafe to load."""


# Speed settings that were model hyperparameters before the training engine had its own config
# key: old checkpoints still carry them, and loading drops them.
LEGACY_MODEL_KEYS = ("steps_per_batch", "compile_step", "cuda_graph", "compile_networks")
# The networks' names for the image they read or write before every network took ``image_shape``
# (linked from the data): old checkpoints, all of 28x28 images, still carry them.
LEGACY_SHAPE_KEYS = ("input_shape", "output_shape")
LEGACY_CHANNEL_KEYS = ("in_channels", "out_channels")
LEGACY_IMAGE_SIZE = (28, 28)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80\x02"  # torch.save's legacy format starts with a pickled magic number


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = str(path)
        if "://" in path:  # remote filesystems: Lightning's own (fsspec transaction) path
            return super().save_checkpoint(checkpoint, path, storage_options)
        # interrupted inside torch.save, the zip writer's clean-up fails with its own error, which would
        # hide the interruption (a traceback and exit 1 instead of Lightning's graceful stop)
        with ctrl_c_deferred(), atomic_open(path, "wb", what="checkpoint") as f:
            torch.save(checkpoint, f)
            f.flush()

    def load_checkpoint(
        self, path, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        path = str(path)
        if "://" not in path:
            _check_is_checkpoint_file(path)
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist") from None
        except pickle.UnpicklingError as err:
            if "Weights only load failed" in str(err) and "Unsupported global" in str(err):
                raise CheckpointError(
                    f"checkpoint {path} refused: it carries pickled Python objects (code that would run on load) "
                    "and checkpoints are loaded weights-only. Load it with --weights_only false only if you "
                    "trust where it came from."
                ) from None
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)})") from None
        except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)})") from None
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
        return checkpoint


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _check_is_checkpoint_file(path: str) -> None:
    """Names a missing, empty or foreign file before torch tries to unpickle it."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror})") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): not a checkpoint; a write may have failed")
    if head != ZIP_MAGIC and not head.startswith(PICKLE_PROTOCOL_2):
        raise CheckpointError(f"{path} is not a checkpoint (not a file written by torch.save)")


def weight_shapes(state_dict: dict) -> dict[str, tuple]:
    """Name -> shape of every entry of a state dict (``()`` for a non-tensor)."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}


def model_arguments(hparams: Optional[dict]) -> dict:
    """A checkpoint's model hyperparameters as this version's model takes them: without the legacy
    speed settings and Lightning's ``_instantiator`` entry, its networks' image arguments renamed."""
    model = {k: v for k, v in (hparams or {}).items() if k not in LEGACY_MODEL_KEYS and k != "_instantiator"}
    return {k: _network_arguments(v) if k in ("encoder", "decoder") else v for k, v in model.items()}


def _network_arguments(network):
    """A network's config (class path and init_args) with a legacy image argument as ``image_shape``."""
    if not isinstance(network, dict) or not isinstance(network.get("init_args"), dict):
        return network
    args = dict(network["init_args"])
    for key in LEGACY_SHAPE_KEYS:
        if key in args:
            args.setdefault("image_shape", args.pop(key))
    for key in LEGACY_CHANNEL_KEYS:
        if key in args:
            args.setdefault("image_shape", [args.pop(key), *LEGACY_IMAGE_SIZE])
    return {**network, "init_args": args}


def check_weights_fit(
    model: torch.nn.Module,
    checkpoint_shapes: dict[str, tuple],
    source: str,
    model_words: Optional[str] = None,
    fix: str = "it was not written by aelight fit, or it was altered",
) -> None:
    """A checkpoint's weights (``weight_shapes``) must fit ``model``; else one line that names
    ``source`` (e.g. ``checkpoint PATH``), the first difference and ``fix``."""
    detail = weights_mismatch(weight_shapes(model.state_dict()), checkpoint_shapes)
    if detail:  # missing or unexpected keys, or shapes that differ
        model_words = model_words or f"the {type(model).__name__} it describes"
        raise CheckpointError(f"{source}: its weights do not fit {model_words} ({detail}); {fix}")


def weights_mismatch(model_shapes: dict[str, tuple], checkpoint_shapes: dict[str, tuple]) -> Optional[str]:
    """The first difference between a model's weights and a checkpoint's (see ``weight_shapes``),
    in words, or None when the checkpoint's weights fit the model."""
    wrong = [k for k in model_shapes if k in checkpoint_shapes and model_shapes[k] != checkpoint_shapes[k]]
    missing = [k for k in model_shapes if k not in checkpoint_shapes]
    unexpected = [k for k in checkpoint_shapes if k not in model_shapes]
    if wrong:
        k = wrong[0]
        return f"{k} has shape {list(checkpoint_shapes[k])} there but {list(model_shapes[k])} in the model"
    if missing:
        return f"it lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        return f"it has {unexpected[0]}, which the model does not{more}"
    return None
