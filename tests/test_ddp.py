"""DDP with two CPU processes (gloo), through the real command: the ddp_sim trainer config."""

import glob
import subprocess
import sys

import torch

from tests.conftest import REPO, short_run_args


def aelight(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "aelight", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_ddp_two_processes_fit_and_predict_with_the_weights_of_lightnings_step_path(tiny_data, tmp_path):
    # The engine's direct steps call backward outside DDP's forward; unless they ready DDP's
    # all-reduce before each backward (as Lightning's manual backward does), each rank trains on
    # its own gradients and the weights differ from Lightning's path.
    config = ["--config=configs/ae.yaml", "--config=configs/trainer/ddp_sim.yaml", "--seed_everything=3"]
    runs = {}
    for name, extra in [("direct", []), ("lightning", ["--trainer.callbacks+=tests.step_hooks.ListensToBackward"])]:
        save_dir = tmp_path / name
        out = aelight(*short_run_args(tiny_data, save_dir, "fit", *config, *extra, epochs=2, batches=4))
        assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout
        how = "direct" if name == "direct" else "through Lightning"
        assert f"aelight engine: 8 optimizer steps per batch, {how}" in out.stdout + out.stderr
        (last,) = glob.glob(str(save_dir / "ae" / "version_0" / "checkpoints" / "last.ckpt"))
        runs[name] = torch.load(last, weights_only=True)
    # each rank: 250 samples = 1 Lightning batch of 8 x 32 per epoch, 8 optimizer steps
    assert runs["direct"]["epoch"] == 1
    assert runs["direct"]["global_step"] == runs["lightning"]["global_step"] == 2 * 8
    for key, value in runs["lightning"]["state_dict"].items():
        torch.testing.assert_close(runs["direct"]["state_dict"][key], value, rtol=0, atol=1e-6)

    aelight("predict", *short_run_args(tiny_data, tmp_path / "direct", *config, "--ckpt_path=last"))
    parts = [
        torch.load(p, weights_only=True)
        for p in sorted(glob.glob(str(tmp_path / "direct" / "ae" / "version_0" / "predictions_rank*.pt")))
    ]
    assert len(parts) == 2
    # the two ranks hold disjoint halves of the 200 test images
    assert [len(p["z"]) for p in parts] == [100, 100]
    recon = torch.cat([p["recon"].flatten(1) for p in parts])
    assert len(torch.unique(recon, dim=0)) == 200
