"""``aelight score``: an exported detector applied to image files, with onnxruntime, numpy and
Pillow alone (no torch, no Lightning, no training code).

    aelight score --model detector/ new_images/ one_more.png --out scores.csv

Prints ``path,score,anomalous`` (1: the score is above the export's threshold), one line per image,
or writes it atomically with ``--out``. Folders are searched for PNG, JPEG, BMP and TIFF files.
"""

import argparse
import csv
import io
import os
import sys
from collections.abc import Iterator

from aelight import safe_files
from aelight.deploy.detector import INPUT, DetectorError, read_metadata
from aelight.errors import one_line_errors
from aelight.image_files import IMAGE_SUFFIXES, images_in, is_image_name, read_pixels

BATCH = 256  # images run at once


def image_files(paths: list[str]) -> list[str]:
    """The image files named by ``paths``: files as given, folders searched as training searches
    them (sorted, hidden entries skipped, any other file an error naming it); a missing path, a
    non-image file or a folder without images is one line."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = images_in(path)
            if not inside:
                raise DetectorError(f"{path}: no image files there ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif os.path.isfile(path):
            if not is_image_name(path):
                raise DetectorError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
            found.append(path)
        else:
            raise DetectorError(f"{path}: no such file or folder")
    return found


def read_image(path: str, meta: dict):
    """One image as float32 (C, H, W) in [0, 1], read as the detector's data module read its
    training images: converted to its channels, resized and cropped as ``metadata.json`` says."""
    channels, height, width = meta["input"]["shape"]
    pixels = read_pixels(path, channels, meta["input"].get("resize"), meta["input"].get("center_crop"))
    if pixels.shape[:2] != (height, width):
        raise DetectorError(
            f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes {width}x{height} "
            "(its export resizes nothing: give images of that size)"
        )
    return pixels.transpose(2, 0, 1).astype("float32") / 255.0


def scorer(folder: str, meta: dict):
    """A function from a float32 batch (N, C, H, W) to its scores (N,)."""
    path = os.path.join(folder, meta["model_file"])
    if not os.path.isfile(path):
        raise DetectorError(f"--model {folder}: {meta['model_file']} is missing; export the model again")
    if meta["format"] == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise DetectorError("aelight score needs onnxruntime: pip install 'aelight[export]'") from None

        try:
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's errors name no common class
            raise DetectorError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None
        return lambda batch: session.run(["score"], {INPUT: batch})[0]
    import warnings

    import torch  # a TorchScript export needs torch to run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        module = torch.jit.load(path)

    def run(batch):
        with torch.no_grad():
            return module(torch.from_numpy(batch))[1].numpy()

    return run


def batches(files: list[str], meta: dict) -> Iterator[tuple[list[str], "object"]]:
    import numpy as np

    for start in range(0, len(files), BATCH):
        names = files[start : start + BATCH]
        yield names, np.stack([read_image(f, meta) for f in names])


def run(args) -> None:
    meta = read_metadata(args.model)
    files = image_files(args.paths)
    score = scorer(args.model, meta)
    rows = []
    for names, batch in batches(files, meta):  # every image read and checked before anything is written
        rows += [(name, float(s)) for name, s in zip(names, score(batch))]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "score", "anomalous"])
    writer.writerows((name, f"{s:.8g}", int(s > meta["threshold"])) for name, s in rows)
    if args.out:
        safe_files.write_text(args.out, text.getvalue(), what="scores")
        print(f"{len(rows)} images scored, {sum(s > meta['threshold'] for _, s in rows)} anomalous: {args.out}")
    else:
        sys.stdout.write(text.getvalue())


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aelight score",
        allow_abbrev=False,
        description="Applies a detector written by `aelight export` to image files and folders.",
        epilog="Prints CSV lines path,score,anomalous (1: score above the export's threshold), or writes\n"
        "them to --out FILE. Needs onnxruntime, numpy and Pillow only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a folder written by aelight export")
    parser.add_argument("--out", default=None, help="write the CSV to this file instead of printing it")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched for images")
    return parser


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    with one_line_errors():
        run(args)
