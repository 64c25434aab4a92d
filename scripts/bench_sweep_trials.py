"""Times what a sweep trial costs beyond its training: a grid of 8 short trials of ``configs/ae.yaml``
(4 batch sizes x 2 seeds; 2 training, validation and test batches; fit then test; a number of batches
is given as 2 because the trainer's parser reads 1 as the float 1.0, all of them) run by ``aelight sweep`` with one
worker, against the same 8 trials run as separate ``aelight fit`` + ``aelight test`` commands, one
after the other, in the same call (the machine's noise hits both alike). Prints one JSON object:
the wall seconds of each and their ratio (the sweep's target: at most 0.35).

    python scripts/bench_sweep_trials.py --data_dir data/
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES, SEEDS = [32, 64, 128, 256], [0, 1]
SHORT = ["--data.val_size=1000", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.enable_model_summary=false",
         "--trainer.enable_progress_bar=false"]  # fmt: skip


def aelight(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "aelight", *args], cwd=REPO, check=True, capture_output=True)


def separate_commands(data_dir: str, out: Path) -> float:
    start = time.perf_counter()
    for batch_size in BATCH_SIZES:
        for seed in SEEDS:
            name = f"b{batch_size}_seed{seed}"
            common = ["--config=configs/ae.yaml", f"--data.data_dir={data_dir}", f"--data.batch_size={batch_size}",
                      *SHORT, f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={name}",
                      f"--seed_everything={seed}"]  # fmt: skip
            aelight("fit", *common)
            best = out / name / "version_0" / "checkpoints" / "best.ckpt"
            aelight("test", *common, f"--ckpt_path={best}")
    return time.perf_counter() - start


def sweep(data_dir: str, out: Path) -> float:
    spec = {"config": "configs/ae.yaml", "grid": {"data.batch_size": BATCH_SIZES}, "seeds": SEEDS,
            "metric": "test/mse", "report": ["val/mse", "test/mse"], "options": SHORT}  # fmt: skip
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    aelight("sweep", str(path), f"--out={out / 'sweep'}", "--devices=cpu", "--workers_per_device=1",
            f"--data.data_dir={data_dir}")  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/", help="the folder holding MNIST/raw")
    args = parser.parse_args()
    data_dir = os.path.abspath(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        separate = separate_commands(data_dir, Path(tmp) / "separate")
        swept = sweep(data_dir, Path(tmp))
    print(json.dumps({"trials": len(BATCH_SIZES) * len(SEEDS), "separate_fit_and_test_s": round(separate, 1),
                      "sweep_one_worker_s": round(swept, 1), "ratio": round(swept / separate, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
