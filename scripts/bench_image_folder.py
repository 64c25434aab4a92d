"""How fast a folder of images starts: ImageFolderDataModule's first setup (every file decoded with
Pillow, then cached), its later setups (the cache read), and MNISTDataModule's setup of the same
images from their IDX files, side by side in one process.

The folder is MNIST written as PNG files in the anomaly layout (digit ``--normal`` as train/good and
test/good, the other test digits as defects), made once in ``--folder``.

    python scripts/bench_image_folder.py --data-dir data/ --folder /tmp/mnist_parts --repeats 3
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aelight.data import ImageFolderDataModule, MNISTDataModule  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_folder(data_dir: str, folder: str, normal: int) -> int:
    """MNIST as PNG files in the anomaly layout; returns how many files."""
    dm = MNISTDataModule(data_dir=data_dir, download=False, val_size=1)
    dm.setup("fit")
    count = 0
    for split, test in (("train", False), ("test", True)):
        ds = dm.splits["test"] if test else dm.splits["train"].dataset
        images, labels = ds.data.numpy(), ds.targets.numpy()
        for i in np.flatnonzero((labels == normal) | test):
            kind = "good" if labels[i] == normal else NAMES[labels[i]]
            path = os.path.join(folder, split, kind)
            os.makedirs(path, exist_ok=True)
            Image.fromarray(images[i]).save(os.path.join(path, f"{i:05d}.png"))
            count += 1
    return count


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data/")
    p.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "aelight_mnist_parts"))
    p.add_argument("--normal", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not os.path.isdir(os.path.join(args.folder, "train", "good")):
        start = time.perf_counter()
        n = write_folder(args.data_dir, args.folder, args.normal)
        print(f"wrote {n} PNG files to {args.folder} in {time.perf_counter() - start:.1f} s")
    cache = tempfile.mkdtemp(prefix="aelight_bench_cache_")
    try:

        def folder_setup():
            dm = ImageFolderDataModule(args.folder, cache_dir=cache)
            dm.prepare_data()
            dm.setup("fit")
            dm.split_tensors("test")

        def mnist_setup():
            dm = MNISTDataModule(data_dir=args.data_dir, download=False, classes=[args.normal])
            dm.prepare_data()
            dm.setup("fit")
            dm.split_tensors("test")

        first = timed(folder_setup)
        files = sum(len(f) for _, _, f in os.walk(args.folder))
        print(f"folder, first setup (decode {files} files, write the cache): {first:.2f} s")
        for r in range(args.repeats):
            cached, mnist = timed(folder_setup), timed(mnist_setup)
            print(f"repeat {r}: folder from its cache {cached:.3f} s, MNIST from IDX files {mnist:.3f} s, "
                  f"ratio {cached / mnist:.2f}; first setup / cached {first / cached:.0f}x")  # fmt: skip
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
