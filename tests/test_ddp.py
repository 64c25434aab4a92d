"""DDP with two CPU processes (gloo), through the real command: the ddp_sim trainer config."""

import glob
import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, short_run_args


def aelight(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "aelight", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


DDP_CONFIG = ["--config=configs/ae.yaml", "--config=configs/trainer/ddp_sim.yaml", "--seed_everything=3"]


def test_ddp_two_processes_fit_with_the_weights_of_lightnings_step_path(tiny_data, tmp_path):
    # The engine's direct steps call backward outside DDP's forward; unless they ready DDP's
    # all-reduce before each backward (as Lightning's manual backward does), each rank trains on
    # its own gradients and the weights differ from Lightning's path.
    runs = {}
    for name, extra in [("direct", []), ("lightning", ["--trainer.callbacks+=tests.step_hooks.ListensToBackward"])]:
        save_dir = tmp_path / name
        out = aelight(*short_run_args(tiny_data, save_dir, "fit", *DDP_CONFIG, *extra, epochs=2, batches=4))
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


@pytest.mark.slow  # a third and fourth DDP launch; one process's predictions are tested in tests/test_cli.py
def test_ddp_predict_writes_one_file_per_rank_with_disjoint_halves_of_the_test_set(tiny_data, tmp_path):
    aelight(*short_run_args(tiny_data, tmp_path, "fit", *DDP_CONFIG, epochs=1, batches=2))
    aelight("predict", *short_run_args(tiny_data, tmp_path, *DDP_CONFIG, "--ckpt_path=last"))
    parts = [
        torch.load(p, weights_only=True)
        for p in sorted(glob.glob(str(tmp_path / "ae" / "version_0" / "predictions_rank*.pt")))
    ]
    assert len(parts) == 2
    # the two ranks hold disjoint halves of the 200 test images
    assert [len(p["z"]) for p in parts] == [100, 100]
    recon = torch.cat([p["recon"].flatten(1) for p in parts])
    assert len(torch.unique(recon, dim=0)) == 200


@pytest.mark.multinode
def test_two_nodes_of_one_process_each_train_as_a_two_process_run_into_one_folder(tiny_data, tmp_path):
    # The commands README gives for two nodes, both on this machine: NODE_RANK 0 and 1, one
    # process each, gloo over 127.0.0.1; against the same config and seed as one two-process node.
    config = DDP_CONFIG
    aelight(*short_run_args(tiny_data, tmp_path / "one_node", "fit", *config, epochs=2, batches=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aelight",
                *short_run_args(
                    tiny_data,
                    tmp_path / "two_nodes",
                    "fit",
                    *config,
                    "--trainer.num_nodes=2",
                    "--trainer.devices=1",
                    epochs=2,
                    batches=4,
                ),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank)},
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    # one run folder, written by rank 0 alone
    assert sorted(p.name for p in (tmp_path / "two_nodes" / "ae").iterdir()) == ["version_0"]
    runs = {
        name: torch.load(tmp_path / name / "ae" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("one_node", "two_nodes")
    }
    assert runs["two_nodes"]["global_step"] == runs["one_node"]["global_step"] == 2 * 8
    for key, value in runs["one_node"]["state_dict"].items():
        torch.testing.assert_close(runs["two_nodes"]["state_dict"][key], value, rtol=0, atol=1e-6)
