"""What ``aelight export`` writes and ``aelight score`` reads: the file names, the graph's input and
output names, and ``metadata.json``'s fields. Plain Python: the scoring side imports this without
torch or Lightning."""

import json
import os
from typing import Any

from aelight.errors import AelightError

METADATA = "metadata.json"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT = "images"  # float32 (N, C, H, W), pixels in [0, 1]
OUTPUTS = ("reconstruction", "score")  # (N, C, H, W) and (N,): higher is more anomalous
SCHEMA = 1


class DetectorError(AelightError):
    """An exported detector's folder is missing or malformed, or an image does not fit it."""


def read_metadata(folder: str) -> dict[str, Any]:
    """``metadata.json`` of an export folder, its fields checked; one line naming what is wrong."""
    path = os.path.join(folder, METADATA)
    if not os.path.isdir(folder):
        raise DetectorError(f"--model {folder}: no such folder; give a folder written by aelight export")
    if not os.path.isfile(path):
        raise DetectorError(f"--model {folder}: no {METADATA} there; give a folder written by aelight export")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise DetectorError(f"{path} cannot be read ({err}); export the model again") from None
    need = ("schema", "format", "model_file", "input", "threshold")
    missing = [k for k in need if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DetectorError(f"{path} lacks {', '.join(missing)}; export the model again with aelight export")
    if meta["schema"] != SCHEMA:
        raise DetectorError(f"{path} is of metadata schema {meta['schema']}; this aelight reads schema {SCHEMA}")
    shape = meta["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and meta["input"].get("channels") in (1, 3)):
        raise DetectorError(f"{path}: input.shape must be [channels, height, width] with 1 or 3 channels")
    return meta
