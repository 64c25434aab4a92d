"""What a user sees in TensorBoard, checked in a real browser.

Trains three short runs (the reference AE, the VAE and the denoising AE), tests each from its best
checkpoint, runs ``aelight reduce`` on the AE (the projector), starts TensorBoard on 127.0.0.1 and
saves screenshots of Time Series, Scalars, Images, HParams and Projector taken by headless Chromium
(Debian's ``chromium`` package; WebGL for the projector through SwiftShader).

    python scripts/tensorboard_screenshots.py --data_dir data/ --out docs/figures/tensorboard
    python scripts/tensorboard_screenshots.py --logdir lightning_logs --skip_training --out shots/

Look at every picture it writes: the script checks that pages load, not what they show.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = ("ae", "vae", "denoising")
# view: (URL fragment, window size, seconds of page time to let it load)
VIEWS = {
    "timeseries": ("#timeseries", (1600, 1100), 20),
    "scalars": ("#scalars&_smoothingWeight=0", (1600, 1300), 20),
    "images": ("#images", (1600, 1400), 20),
    "hparams": ("#hparams", (3000, 600), 20),
    "projector": ("#projector", (1600, 1000), 40),
}


def aelight(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "aelight", *args], cwd=REPO, check=True)


def train(logdir: Path, data_dir: str, epochs: int) -> None:
    common = [
        f"--data.data_dir={data_dir}",
        f"--trainer.logger.init_args.save_dir={logdir}",
        "--trainer.enable_progress_bar=false",
    ]
    for name in RUNS:
        aelight("fit", f"--config=configs/{name}.yaml", f"--trainer.max_epochs={epochs}", *common)
        aelight("test", f"--config=configs/{name}.yaml", "--ckpt_path=best", *common)
    ckpt = logdir / "ae" / "version_0" / "checkpoints" / "best.ckpt"
    aelight("reduce", f"--ckpt_path={ckpt}", f"--data.data_dir={data_dir}", "--projector_images=2000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tensorboard(logdir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}", "--host=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2)
            time.sleep(3)  # let it read the event files
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("TensorBoard did not start within 60 s")


def screenshot(browser: str, url: str, path: Path, size: tuple[int, int], seconds: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={profile}",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # WebGL for the projector
                f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={seconds * 1000}",
                f"--screenshot={path}", url,
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds * 6 + 60,
        )  # fmt: skip
    if not path.exists() or path.stat().st_size < 10_000:
        raise SystemExit(f"{path}: no screenshot, or an empty page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/", help="folder holding MNIST/raw")
    parser.add_argument("--out", default="tensorboard_screenshots", help="folder for the PNG screenshots")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--logdir", default=None, help="TensorBoard folder (default: a temporary one)")
    parser.add_argument("--skip_training", action="store_true", help="screenshot an existing --logdir as it is")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.browser:
        raise SystemExit("no chromium found: install Debian's chromium package, or give --browser PATH")
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="aelight_tb_")).absolute()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_training:
        train(logdir, os.path.abspath(args.data_dir), args.epochs)
    port = free_port()
    tensorboard = start_tensorboard(logdir, port)
    try:
        for name, (fragment, size, seconds) in VIEWS.items():
            path = out / f"{name}.png"
            screenshot(args.browser, f"http://127.0.0.1:{port}/{fragment}", path.absolute(), size, seconds)
            print(f"{path}  ({size[0]}x{size[1]})")
    finally:
        tensorboard.terminate()
        tensorboard.wait()


if __name__ == "__main__":
    main()
