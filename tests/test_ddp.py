"""DDP with two CPU processes (gloo), through the real command: the ddp_sim trainer config."""

import glob
import subprocess
import sys

import torch

from tests.conftest import REPO


def aelight(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "aelight", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_ddp_two_processes_fit_test_and_predict(cli_args, tmp_path):
    config = ["--config=configs/ae.yaml", "--config=configs/trainer/ddp_sim.yaml"]
    fit = aelight(*cli_args("fit", *config, epochs=2, batches=4))
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in fit.stderr + fit.stdout
    (last,) = glob.glob(str(tmp_path / "logs" / "ae" / "version_0" / "checkpoints" / "last.ckpt"))
    ckpt = torch.load(last, weights_only=True)
    # each rank: 250 samples = 1 Lightning batch of 8 x 32 per epoch, 8 optimizer steps
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * 8
    test = aelight(*cli_args("test", *config, "--ckpt_path=last"))
    assert "test/mse" in test.stdout
    aelight(*cli_args("predict", *config, "--ckpt_path=last"))
    parts = [
        torch.load(p, weights_only=True)
        for p in sorted(glob.glob(str(tmp_path / "logs" / "ae" / "version_0" / "predictions_rank*.pt")))
    ]
    assert len(parts) == 2
    # the two ranks hold disjoint halves of the 200 test images
    assert [len(p["z"]) for p in parts] == [100, 100]
    recon = torch.cat([p["recon"].flatten(1) for p in parts])
    assert len(torch.unique(recon, dim=0)) == 200
