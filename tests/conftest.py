"""Fixtures: tiny MNIST-format IDX files written on the spot, so every test goes through
torchvision's real reader and none touches the network."""

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # the suite's processes share the cores: one thread each
    # (each library's default, a thread per core, would have OpenMP threads spin against each other);
    # the runs the tests start inherit it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("AELIGHT_REAL_DATA", REPO / "data"))  # the folder README's commands use

# The suite's processes each take a whole test file and hold the next one waiting (pytest-xdist's
# --dist loadfile). The files are handed out longest first, the waiting ones matched to the running
# ones so that the processes end together; a file not named here follows, in collection order. Left
# to xdist (files with the most tests first), the long files with few tests started last and one
# process ran on alone at the end.
LONGEST_FIRST = ("test_cli.py", "test_trust_boundary.py", "test_sweep_runs.py", "test_ddp.py", "test_sweep.py",
                 "test_postgres.py", "test_apps.py", "test_reliability.py", "test_folder.py", "test_models.py",
                 "test_real_data.py", "test_fast_path.py", "test_tensorboard.py", "test_deploy.py",
                 "test_step_axis.py", "test_run_result.py")  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests as written


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000080N, big-endian dims, raw bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of smooth 28x28 strokes with jitter: structured enough for an autoencoder to learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    templates = []
    t_rng = np.random.default_rng(1234)  # the same ten templates in every split
    for _ in range(10):
        img = np.zeros((28, 28))
        for _ in range(3):
            cy, cx = t_rng.uniform(8, 20, size=2)
            sy, sx = t_rng.uniform(1.5, 5, size=2)
            img += np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
        templates.append(img / img.max())
    labels = rng.integers(0, 10, size=n)
    images = np.empty((n, 28, 28))
    for i, label in enumerate(labels):
        shifted = np.roll(templates[label], rng.integers(-2, 3, size=2), axis=(0, 1))
        images[i] = np.clip(shifted * rng.uniform(0.7, 1.0) + rng.normal(0, 0.03, (28, 28)), 0, 1)
    return (images * 255).round().astype(np.uint8), labels.astype(np.uint8)


def make_mnist_root(root: Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST") -> Path:
    raw = root / folder / "raw"
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data_dir holding MNIST/raw with 600 training and 200 test images."""
    return make_mnist_root(tmp_path_factory.mktemp("tiny_mnist"))


def short_run_args(data_dir, save_dir, *extra: str, epochs: int = 1, batches: int = 2) -> list[str]:
    """CLI flags for a short run on the data in ``data_dir``, logging under ``save_dir``."""
    return [
        *extra,
        f"--data.data_dir={data_dir}",
        "--data.download=false",
        "--data.val_size=100",
        "--data.batch_size=32",
        "--data.eval_batch_size=50",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
    ]


@pytest.fixture
def cli_args(tiny_data, tmp_path):
    """Common CLI flags for short runs on the tiny data, logging under tmp_path."""

    def args(*extra: str, epochs: int = 1, batches: int = 2) -> list[str]:
        return short_run_args(tiny_data, tmp_path / "logs", *extra, epochs=epochs, batches=batches)

    return args


SLOW_SAVE_DRIVER = textwrap.dedent(
    """
    # Runs the real CLI with torch.save slowed down after the first argv[2] calls: each later call
    # writes, touches argv[1] and sleeps, so a test kills it inside that write for certain (polling
    # for the temporary file alone could also catch a fast, complete write).
    import pathlib, sys, time, torch
    real_save, calls, signal_file, normal = torch.save, [0], pathlib.Path(sys.argv[1]), int(sys.argv[2])

    def slow_save(obj, f, *args, **kwargs):
        calls[0] += 1
        real_save(obj, f, *args, **kwargs)
        if calls[0] > normal:
            f.flush()
            signal_file.touch()
            time.sleep(60)

    torch.save = slow_save
    from aelight.commands import main
    main(sys.argv[3:])
    """
)


def answer_ctrl_c() -> None:
    """A child's ``preexec_fn``: Ctrl-C answered as a terminal's command answers it, even when the
    tests were started in a shell's background, which sets SIGINT ignored for every child (Python
    then installs its KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_inside_a_slow_save(args: list[str], signal_file: Path, normal_saves: int, caught=lambda: True) -> int:
    """Runs ``aelight args`` with every torch.save after the first ``normal_saves`` slowed down,
    SIGKILLs it once it is inside such a write (``caught()`` must hold then) and returns its exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE_DRIVER, str(signal_file), str(normal_saves), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while not signal_file.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert signal_file.exists() and caught(), "no write was caught in progress"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode
