"""aelight sweep run end to end on tiny data: the sweep's command in its own process, its workers,
their trials' runs, and how it stops and continues."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from aelight.errors import ConfigError
from aelight.sweep import spec as sweep_spec
from aelight.sweep import trial as sweep_trial
from aelight.sweep.trial_process import BEST_CHECKPOINT
from tests.conftest import REPO
from tests.test_sweep import SHORT, rows, sweep_cmd, write_spec


def test_a_grid_over_two_workers_gives_a_row_with_metrics_per_trial_and_a_failing_one_its_reason(tiny_data, tmp_path):
    spec, out = write_spec(tmp_path, {"data.batch_size": [0, 16, 32]}), tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(spec, out, tiny_data), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # some trials completed
    table = [r for r in rows(out) if r["data.batch_size"] != "0"]
    assert len(table) == 4 and {r["status"] for r in table} == {"complete"}
    assert {(r["data.batch_size"], r["seed"]) for r in table} == {("16", "0"), ("16", "1"), ("32", "0"), ("32", "1")}
    assert all(0 < float(r["val/mse (last)"]) < 1 and float(r["val/psnr (last)"]) > 0 for r in table)
    assert len({r["run"] for r in table}) == 4  # two workers never share a run folder
    assert {r["device"] for r in table} == {f"{socket.gethostname()} cpu"}  # where each trial ran
    for r in table:  # each an ordinary aelight run, visible in TensorBoard
        assert list(Path(r["run"]).glob("seed*/version_0/checkpoints/best.ckpt"))
    failed = [r for r in rows(out) if r["data.batch_size"] == "0"]  # a setting that cannot work
    assert len(failed) == 2 and all(r["status"] == "failed" for r in failed)
    assert all("data.batch_size must be at least 1" in r["reason"] for r in failed)
    markdown = (out / "results.md").read_text()
    assert "data.batch_size=16 | 2 |" in markdown and "data.batch_size=32 | 2 |" in markdown
    assert "data.batch_size must be at least 1" in markdown
    assert "| setting | seeds | val/mse (last) | val/psnr (last) |" in proc.stdout  # printed at the end
    assert f"tensorboard --logdir {out}/runs" in proc.stdout  # where the trials compare in HParams
    assert "6 of 6 trials to run, 2 worker(s) on the CPU" in proc.stderr  # what it will do, then each trial's end
    assert proc.stderr.count(" complete (data.batch_size=") == 4 and "[6 of 6 ended]" in proc.stderr
    assert "failed (data.batch_size=0, seed=0): aelight fit exited with 1: data.batch_size must be" in proc.stderr


@pytest.mark.slow  # the features trial below fits, applies its command and reads its report the same way
def test_a_one_class_sweep_reports_each_digit_s_auroc_from_its_report_and_their_mean(tiny_data, tmp_path):
    spec = tmp_path / "one_class.yaml"
    spec.write_text(yaml.safe_dump({"command": "anomaly", "config": str(REPO / "configs/anomaly/ae.yaml"),
                                    "grid": {"digits": [0, 1]}, "seeds": [0], "report": ["auroc", "f1"],
                                    "options": [*SHORT, "--trainer.max_epochs=2"]}))  # fmt: skip
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(spec, out, tiny_data, workers=1), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = rows(out)
    assert sorted(r["digits"] for r in table) == ["0", "1"] and {r["status"] for r in table} == {"complete"}
    for row in table:
        folder = Path(row["run"]) / "report_seed0"
        report = json.loads((folder / "report.json").read_text())
        digit = report["digits"][row["digits"]]
        assert float(row["auroc"]) == pytest.approx(digit["auroc"]) and float(row["f1"]) == pytest.approx(digit["f1"])
        result = json.loads((folder / "result.json").read_text())  # what the sweep read
        assert result["command"] == "anomaly" and result["status"] == "completed"
        assert len((folder / "scores.csv").read_text().splitlines()) == 201  # header and each test image
    mean = (float(table[0]["auroc"]) + float(table[1]["auroc"])) / 2
    assert f"Mean auroc over the 2 settings: {mean:.4f}" in (out / "results.md").read_text()


@pytest.mark.slow  # about a minute; the pruner's decision is also tested on a study in tests/test_sweep.py
def test_a_tpe_search_prunes_a_trial_that_trails_the_median(tiny_data, tmp_path):
    # learning rates from 1e-4 to 1e3: the larger, the worse; TPE's startup draws are seeded by the
    # worker's index, so the sixth trial (lr 3.3) trails the median of the five before it
    lr = {"model.init_args.optimizer.init_args.lr": {"low": 1e-4, "high": 1e3, "log": True}}
    spec = write_spec(tmp_path, {}, search=lr, trials=6, prune=True, seeds=[0], metric="val/loss (last)",
                      report=["val/loss (last)"], options=[*SHORT, "--trainer.max_epochs=3",
                                                    "--trainer.limit_train_batches=2"])  # fmt: skip
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(spec, out, tiny_data, workers=1), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = rows(out)
    pruned = [r for r in table if r["status"] == "pruned"]
    assert pruned and len(table) == 6, proc.stderr[-3000:]
    assert all(r["reason"].startswith("val/loss ") and "worse than the median" in r["reason"] for r in pruned)
    for row in pruned:  # it stopped early, as its run's result says, with a worse val/loss than the median
        fit = json.loads((Path(row["run"]) / "results" / "seed0_fit.json").read_text())
        assert fit["status"] == "pruned" and fit["exit_code"] == 3 and fit["epochs"] < 3
        best = min(float(r["val/loss (last)"]) for r in table if r["status"] == "complete")
        assert float(row["reason"].split()[1]) > best


def test_an_application_trial_fits_then_applies_the_command_to_its_best_checkpoint(tiny_data, tmp_path):
    spec = write_spec(tmp_path, {}, command="features", metric="logistic_regression_test_accuracy",
                      report=["logistic_regression_test_accuracy", "val/mse (last)", "test/mse"],
                      app_options=["--max_iter=50"], seeds=[0])  # fmt: skip
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(spec, out, tiny_data, workers=1), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = rows(out)
    report = json.loads((Path(row["run"]) / "features_seed0" / "report.json").read_text())
    assert report["checkpoint"].endswith("seed0/version_0/checkpoints/best.ckpt")
    assert float(row["logistic_regression_test_accuracy"]) == pytest.approx(report["logistic_regression_test_accuracy"])
    assert 0 < float(row["val/mse (last)"]) < 1  # fit's own metrics beside the report's
    test = json.loads((Path(row["run"]) / "results" / "seed0_test.json").read_text())  # and the test run's
    assert test["checkpoints"]["loaded"] == report["checkpoint"]
    assert float(row["test/mse"]) == pytest.approx(test["metrics"]["test"]["test/mse"])
    loaded = sweep_spec.load_spec(str(spec))
    assert loaded.direction == "maximize"
    (fit, _test, features) = [c.argv for c in sweep_trial.trial_commands(
        loaded, {"seed": 0}, 0, tmp_path, ["--data.data_dir", "d/", "--data.val_size=100"]
    )]  # fmt: skip
    # the best checkpoint that the fit's result.json names
    assert features[:2] == ["features", f"--ckpt_path={BEST_CHECKPOINT}"]
    assert "--data.data_dir=d/" in features and "--data.val_size=100" in features  # the data the fit had
    assert features[-2:] == ["--max_iter=50", f"--out={tmp_path}/features_seed0"]
    assert not [o for o in features if o.startswith("--trainer")]  # fit's options stay with the fit
    (tmp_path / "bad.yaml").write_text("config: configs/ae.yaml\napp_options: [--max_iter=5]")
    with pytest.raises(ConfigError, match="app_options are for a command among"):
        sweep_spec.load_spec(str(tmp_path / "bad.yaml"))


@pytest.mark.slow  # the failing trials' rows and reasons are also held by the grid test above
def test_a_sweep_whose_every_trial_failed_says_so_and_exits_non_zero(tiny_data, tmp_path):
    spec, out = write_spec(tmp_path, {"data.batch_size": [0]}, seeds=[0]), tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(spec, out, tiny_data, 3), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 of 1 trials to run, 1 worker(s) on the CPU" in proc.stderr  # no more workers than trials
    assert f"aelight: error: no trial of the sweep completed; {out / 'results.md'} lists why" in proc.stderr
    assert "No trial has completed." in (out / "results.md").read_text() and rows(out)[0]["status"] == "failed"


def test_a_second_run_after_a_kill_finishes_the_rest_and_continues_the_killed_fit_from_its_last_checkpoint(
    tiny_data, tmp_path
):
    pause = {"class_path": "tests.step_hooks.PausesAfterEachEpoch", "init_args": {"seconds": 0.5}}
    options = [*SHORT, "--trainer.max_epochs=3", f"--trainer.callbacks+={json.dumps(pause)}"]  # three epochs
    spec, out = write_spec(tmp_path, {"data.batch_size": [16, 32]}, options=options), tmp_path / "sweep"
    cmd = sweep_cmd(spec, out, tiny_data, workers=1)
    first = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    killed_run = out / "runs" / "trial_1"
    while not list(killed_run.glob("seed*/version_0/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)  # one trial done, the next past its first epoch
    (last,) = killed_run.glob("seed*/version_0/checkpoints/last.ckpt")
    os.killpg(first.pid, signal.SIGKILL)  # the sweep, its worker, its forkserver and the trial's run, at once
    first.wait()
    epochs_before = torch.load(last, weights_only=True)["epoch"]
    assert epochs_before < 2  # killed before its fit ended
    again = sweep_cmd(spec, out, tiny_data, workers=2)
    proc = subprocess.run(again, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = rows(out)
    complete = [r for r in table if r["status"] == "complete"]
    assert sorted((r["data.batch_size"], r["seed"]) for r in complete) == [
        ("16", "0"), ("16", "1"), ("32", "0"), ("32", "1")
    ]  # each exactly once  # fmt: skip
    (killed,) = [r for r in table if r["trial"] == "1"]
    # its point and seed completed by a later trial: marked superseded, naming that trial
    assert killed["status"] == "superseded" and killed["reason"].endswith(
        "completed this setting and seed (interrupted)"
    )
    assert "interrupted trial(s) again" in proc.stderr
    assert "3 of 4 trials to run, 2 worker(s) on the CPU" in proc.stderr  # one finished before the kill
    # the trial that ran the killed one's point again continued its fit in its folder, from its last
    # checkpoint: one run folder, three epochs in all, as the uninterrupted fit would have
    point = (killed["data.batch_size"], killed["seed"])
    (continued,) = [r for r in complete if (r["data.batch_size"], r["seed"]) == point]
    assert continued["run"] == str(killed_run) and continued["trial"] != "1"
    seed_folder = killed_run / f"seed{killed['seed']}"
    fit = json.loads((killed_run / "results" / f"seed{killed['seed']}_fit.json").read_text())
    assert fit["status"] == "completed" and fit["checkpoints"]["loaded"] == str(last)
    assert [p.name for p in seed_folder.iterdir()] == ["version_0"]
    finished = torch.load(last, weights_only=True)
    assert finished["epoch"] == 2 and finished["global_step"] == 3 * 2 * 8  # 2 batches of 8 steps per epoch


@pytest.mark.parametrize(
    "stop, workers", [pytest.param("SIGINT", 2, marks=pytest.mark.slow), ("SIGTERM", 1)]
)  # Ctrl-C with two workers: -m slow
def test_ctrl_c_or_sigterm_stops_every_worker_and_run_without_a_traceback(tiny_data, tmp_path, stop, workers):
    spec, out = write_spec(tmp_path, {"data.batch_size": [16, 32]}), tmp_path / "sweep"
    cmd = [*sweep_cmd(spec, out, tiny_data, workers), "--trainer.max_epochs=100000"]  # runs until stopped
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while len(list(out.glob("runs/trial_*/seed*/version_0"))) < workers and time.time() < deadline:  # all training
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(first.pid, getattr(signal, stop))  # as a terminal's Ctrl-C does: the whole process group
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == {"SIGINT": 130, "SIGTERM": 143}[stop], stderr[-3000:]
    assert "Traceback" not in stderr and "run the same command again" in stderr
    with pytest.raises(ProcessLookupError):  # no worker, forkserver or run left behind
        os.killpg(first.pid, 0)
    table = rows(out)
    assert len(table) == workers and all(r["status"] == "failed" and r["reason"] == "interrupted" for r in table)
