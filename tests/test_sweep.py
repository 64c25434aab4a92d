"""``aelight sweep`` on tiny data: a grid of short trials over 2 CPU workers gives a row with metrics
per trial, a failing trial is recorded with its reason while the others finish, a second run after
a kill finishes the rest without repeating a finished trial, and no two trials share a folder."""

import csv
import dataclasses
import functools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from aelight.errors import ConfigError
from aelight.sweep import command as sweep_command
from aelight.sweep import results as sweep_results
from aelight.sweep import spec as sweep_spec
from aelight.sweep import study as sweep_study
from aelight.sweep import trial as sweep_trial
from aelight.sweep import workers as sweep_workers
from tests.conftest import REPO

CODE_SIZE = "model.init_args.encoder.init_args.out_features"
LATENT = "model.init_args.decoder.init_args.in_features"
# limit_train_batches 2, not 1: Lightning reads an int 1 given as text as 1.0, every batch
SHORT = ["--data.download=false", "--data.val_size=100", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false"]  # fmt: skip


def write_spec(tmp_path: Path, grid: dict, **extra) -> Path:
    spec = {"config": "configs/ae.yaml", "grid": grid, "seeds": [0, 1], "metric": "val/mse (last)",
            "report": ["val/mse (last)", "val/psnr (last)"], "options": SHORT, **extra}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_cmd(spec: Path, out: Path, data: Path, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "aelight", "sweep", str(spec), f"--out={out}", "--devices=cpu",
            f"--workers_per_device={workers}", f"--data.data_dir={data}"]  # fmt: skip


def rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_a_typo_in_a_grid_or_search_option_is_one_line_before_any_worker_starts(tmp_path, capsys):
    out = tmp_path / "sweep"
    typo = {"model.init_args.optimiser.init_args.lr": [1e-3]}
    with pytest.raises(SystemExit) as exit_:  # the whole command, its check in a process of its own
        sweep_command.run([str(write_spec(tmp_path, typo)), f"--out={out}", "--devices=cpu"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    named = f"aelight: error: sweep spec {tmp_path / 'spec.yaml'}: grid.model.init_args.optimiser.init_args.lr: 0.001: "
    assert err.startswith(named) and "optimiser.init_args.lr" in err.removeprefix(named), err
    assert not out.exists()  # no study, no run folder


GRID = sweep_spec.SweepSpec(path="t", grid={"data.batch_size": [16, 32]}, seeds=[0], metric="val/mse",
                            direction="minimize", report=["val/mse"])  # fmt: skip


def test_a_grid_point_drawn_twice_is_run_once_and_the_spare_trial_is_left_out(tmp_path):
    spec = dataclasses.replace(GRID, grid={"data.batch_size": [16]})
    study = sweep_study.open_study(spec, "s", f"sqlite:///{tmp_path / 'study.db'}", create=True)
    ran = []

    def run(trial, params, seeds):
        ran.append(trial.number)
        return 0.02

    first = study.ask()
    sweep_trial.objective(first, spec, run)  # runs; its worker has not yet told the study
    again = study.ask()  # a worker more than points left: Optuna's grid sampler hands out the running point
    assert again.params == {} and sweep_study.left_to_start(study, spec) == 0
    with pytest.raises(sweep_trial.TrialFailed):
        sweep_trial.objective(again, spec, run)
    assert ran == [first.number] and again.params == first.params
    study.tell(first, 0.02)
    study.tell(again, state=TrialState.FAIL)
    with pytest.raises(sweep_trial.TrialFailed):  # a finished point is not run again either
        sweep_trial.objective(study.ask(), spec, run)
    assert ran == [first.number]
    assert [r["trial"] for r in sweep_results.result_rows(study, spec)] == [first.number]
    assert sweep_results.progress_line(study, study.trials[0], spec).endswith("[1 of 1 ended]")


def test_interrupted_trials_queued_again_all_run_even_with_one_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = sweep_study.open_study(GRID, "s", url, create=True)

    def interrupted(trial, params, seeds):  # as run_trial records a run stopped by Ctrl-C
        trial.set_user_attr("interrupted", True)
        raise KeyboardInterrupt

    for _ in range(2):  # both points were running when the sweep was stopped
        with pytest.raises(KeyboardInterrupt):
            sweep_workers.run_trials(study, GRID, interrupted)
    assert sweep_study.requeue_interrupted(study, url, GRID) == 2
    assert sweep_study.left_to_start(study, GRID) == 2  # the two queued trials, counted once
    ran = []
    sweep_workers.run_trials(study, GRID, lambda trial, params, seeds: ran.append(params["data.batch_size"]) or 0.02)
    assert sorted(ran) == [16, 32]  # Optuna's grid sampler alone stops after the first: every point was visited
    assert sweep_study.left_to_start(study, GRID) == 0


def test_a_search_sweep_runs_an_interrupted_setting_again_with_the_same_values(tmp_path):
    spec = sweep_spec.SweepSpec(path="t", search={"model.init_args.optimizer.init_args.lr": {"low": 1e-4, "high": 1e-2,
                                "log": True}}, trials=3, seeds=[0], metric="val/mse", direction="minimize",
                                report=["val/mse"])  # fmt: skip
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = sweep_study.open_study(spec, "s", url, create=True)
    drawn = []

    def interrupted(trial, params, seeds):  # as run_trial records a run stopped by Ctrl-C
        drawn.append(params)
        trial.set_user_attr("interrupted", True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep_workers.run_trials(study, spec, interrupted)
    assert sweep_study.requeue_interrupted(study, url, spec) == 1
    ran = []
    sweep_workers.run_trials(study, spec, lambda trial, params, seeds: ran.append(params) or 0.02)
    # the interrupted setting first, as it was drawn, then the search's other two trials
    assert len(ran) == 3 and ran[0] == drawn[0] and drawn[0] not in ran[1:]
    assert sweep_study.left_to_start(study, spec) == 0


def test_spec_configs_are_found_beside_the_spec_then_in_the_current_folder(tmp_path, monkeypatch):
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "mine.yaml").write_text("trainer: {max_epochs: 1}\n")
    (tmp_path / "here.yaml").write_text("trainer: {max_epochs: 2}\n")
    (lab / "spec.yaml").write_text("config: mine.yaml\ngrid: {config: [here.yaml]}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)  # here.yaml is in the current folder, mine.yaml beside the spec
    spec = sweep_spec.load_spec(str(lab / "spec.yaml"))
    fit = sweep_trial.trial_commands(spec, {"config": "here.yaml"}, 0, tmp_path / "runs", [])[0].argv
    assert f"--config={lab / 'mine.yaml'}" in fit and "--config=here.yaml" in fit
    monkeypatch.chdir(elsewhere)  # from another folder, the one beside the spec is still found; here.yaml is not
    with pytest.raises(ConfigError, match="config file here.yaml not found .looked beside the spec"):
        sweep_spec.load_spec(str(lab / "spec.yaml"))


def test_the_shipped_specs_load_and_spec_mistakes_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the specs name config files relative to where aelight runs
    for path in sorted((REPO / "configs/sweeps").glob("*.yaml")):  # every shipped spec, its configs present
        spec = sweep_spec.load_spec(str(path))
        configs = [*spec.config, *spec.grid.get("config", [])]
        assert configs or not spec.trains, path.name  # only a baseline's spec names no model
        assert all((REPO / c).exists() for c in configs), path.name
    likelihood = sweep_spec.load_spec(str(REPO / "configs/sweeps/likelihood.yaml"))
    assert likelihood.command == "nll" and likelihood.direction == "minimize"
    variants = sweep_spec.load_spec(str(REPO / "configs/sweeps/variants.yaml"))
    assert len(variants.grid["config"]) >= 7 and variants.seeds == [0, 1, 2]
    assert all((REPO / c).exists() for c in variants.grid["config"])
    one_class = sweep_spec.load_spec(str(REPO / "configs/sweeps/one_class.yaml"))
    assert one_class.command == "anomaly" and one_class.grid["digits"] == list(range(10))
    assert one_class.direction == "maximize"
    assert one_class.config == ["configs/anomaly/restoration.yaml"]  # the recipe; the first one stays runnable
    assert sweep_spec.load_spec(str(REPO / "configs/sweeps/one_class_mlp.yaml")).config == ["configs/anomaly/ae.yaml"]
    # fit, then the linear probe of the best checkpoint's features
    for name in ("features", "features_wta_wide", "features_wta128"):
        probe = sweep_spec.load_spec(str(REPO / f"configs/sweeps/{name}.yaml"))
        assert probe.command == "features" and probe.direction == "maximize"
        assert probe.metric == "logistic_regression_test_accuracy" and probe.seeds == [0, 1, 2]
    search = sweep_spec.load_spec(str(REPO / "configs/sweeps/ae_search.yaml"))
    assert search.prune and search.trials == 20 and search.metric == "val/loss (best)"
    for text, message in (
        ("grid: {data.batch_size: 16}", "must be a non-empty list"),
        ("grid: {a: [1]}\nsurprise: 1", "unknown key"),
        ("search: {lr: {low: 0.1}}\nconfig: configs/ae.yaml", "needs low and high"),
        ("search: {lr: {choices: [1]}}\nconfig: configs/ae.yaml\ntrials: 0", "a search needs trials: N"),
        ("grid: [1, 2]\nconfig: configs/ae.yaml", "grid must be a mapping of options"),
        ("grid: {config: [configs/ae.yaml, configs/nope.yaml]}", "config file configs/nope.yaml not found"),
        ("config: configs/ae.yaml\nseeds: [0, true]", "seeds must be whole numbers"),
        ("config: configs/ae.yaml\ngrid: {a: [1]}\nlink: {b: c}", "link maps an option to the grid or search"),
        ("config: configs/ae.yaml\ngrid: {a: [1]}\nlink: {b: {from: a, times: two}}", r"\{from: option, times: k\}"),
        ("config: configs/ae.yaml\ngrid: {a: [1]}\nlink: {b: {from: a, plus: 1}}", "link maps an option"),
        ("config: configs/ae.yaml\ngrid: {a: [x, y]}\nlink: {b: {from: a, times: 2}}", "a multiple of a, not a number"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            sweep_spec.load_spec(str(tmp_path / "bad.yaml"))
    code_size = sweep_spec.load_spec(str(REPO / "configs/sweeps/code_size.yaml"))  # the decoder's input linked
    fit = sweep_trial.trial_commands(code_size, {CODE_SIZE: 8, "seed": 0}, 0, tmp_path, [])[0].argv
    assert f"--{CODE_SIZE}=8" in fit and "--model.init_args.decoder.init_args.in_features=8" in fit
    vae = sweep_spec.load_spec(str(REPO / "configs/sweeps/vae_beta.yaml"))  # the encoder gives twice the latent size
    fit = sweep_trial.trial_commands(vae, {LATENT: 8, "model.init_args.beta": 2.0, "seed": 0}, 0, tmp_path, [])[0].argv
    assert f"--{LATENT}=8" in fit and f"--{CODE_SIZE}=16" in fit and "--model.init_args.beta=2.0" in fit
    halved = dataclasses.replace(vae, link={LATENT: {"from": CODE_SIZE, "times": 0.5}})
    fit = sweep_trial.trial_commands(halved, {CODE_SIZE: 64, "seed": 0}, 0, tmp_path, [])[0].argv
    assert f"--{LATENT}=32" in fit  # a whole number stays one: the option takes an int
    for metric, direction in (("test/elbo", "maximize"), ("val/psnr_best", "maximize"), ("f1", "maximize"),
                              ("test/nll", "minimize"), ("val/loss (best)", "minimize")):  # fmt: skip
        (tmp_path / "m.yaml").write_text(f"config: configs/ae.yaml\nmetric: {metric}")
        assert sweep_spec.load_spec(str(tmp_path / "m.yaml")).direction == direction, metric
    (tmp_path / "seeds.yaml").write_text("config: configs/ae.yaml\nseeds: [0, 1, 2]")  # one setting, three seeds
    seeds_only = sweep_spec.load_spec(str(tmp_path / "seeds.yaml"))
    assert seeds_only.grid == {} and seeds_only.seeds == [0, 1, 2]
    proc = subprocess.run([sys.executable, "-m", "aelight", "sweep", str(tmp_path / "missing.yaml")], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "missing.yaml" in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_devices_that_do_not_exist_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    for argv, message in (
        (["--devices=0"], "--devices 0: this machine has 0 GPU(s)"),
        (["--devices=a,b"], "give cpu or GPU indices"),
        (["--workers_per_device=0"], "--workers_per_device must be at least 1"),
        (["--devices=cpu", "--trainer.fast_dev_run", "true"], "a fast_dev_run keeps no logs or checkpoints"),
    ):
        with pytest.raises(SystemExit) as exit_:
            sweep_command.run([str(REPO / "configs/sweeps/variants.yaml"), f"--out={out}", *argv])
        assert exit_.value.code == 1 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_storage_that_cannot_be_opened_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    for url in ("nosuchdb://host/x", f"sqlite:///{tmp_path}/no/such/folder/study.db"):
        with pytest.raises(SystemExit) as exit_:
            sweep_command.run(
                [str(REPO / "configs/sweeps/variants.yaml"), f"--out={out}", "--devices=cpu", f"--storage={url}"]
            )
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and f"--storage {url}: cannot open it" in err and "Traceback" not in err
    assert not out.exists()


def test_a_failed_run_s_reason_is_the_parser_s_explanation_without_its_search():
    from aelight.run.arguments import parser_reason

    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'aelight.models.autoencoder.AE'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'aelight.models.AE':
        Option 'bogus' is not accepted
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='bogus', val='2')
"""
    assert parser_reason(message) == (
        "Parser key \"model\": Problem with given class_path 'aelight.models.AE': Option 'bogus' is not accepted"
    )


def test_results_tables_average_seeds_and_rank_settings():
    spec = sweep_spec.SweepSpec(path="t", metric="test/mse", direction="minimize", report=["test/mse"])
    table = [
        {"trial": 0, "status": "complete", "seed": 0, "lr": 0.1, "test/mse": 0.3},
        {"trial": 1, "status": "complete", "seed": 1, "lr": 0.1, "test/mse": 0.5},
        {"trial": 2, "status": "complete", "seed": 0, "lr": 0.01, "test/mse": 0.2},
        {"trial": 3, "status": "failed", "seed": 1, "lr": 0.01, "test/mse": None, "reason": "boom"},
    ]
    markdown = sweep_results.results_markdown(table, spec, "t")
    lines = [line for line in markdown.splitlines() if line.startswith("| lr=")]
    assert lines == ["| lr=0.01 | 1 | 0.2000 |", "| lr=0.1 | 2 | 0.4000 ± 0.1414 |"]
    assert "Mean" not in markdown  # a mean over learning rates means nothing; over digits it is the protocol's figure
    with_options = sweep_results.results_markdown(table, spec, "t", ["--trainer.max_epochs=10"])
    assert "seeds.\n\nEvery trial also had --trainer.max_epochs=10.\n\n| setting" in with_options  # how it was made
    digits = [{"trial": d, "status": "complete", "seed": 42, "digits": d, "auroc": a} for d, a in ((0, 0.9), (1, 0.8))]
    one_class = sweep_spec.SweepSpec(
        path="t", command="anomaly", metric="auroc", direction="maximize", report=["auroc"]
    )
    assert "Mean auroc over the 2 settings: 0.8500" in sweep_results.results_markdown(digits, one_class, "t")
    seeds = [{"trial": 2 * d + s, "status": "complete", "seed": s, "digits": d, "auroc": a}
             for d, pair in enumerate(((0.9, 0.7), (0.8, 0.6))) for s, a in enumerate(pair)]  # fmt: skip
    # the protocol's mean over digits per seed (0.85 and 0.65), then their mean and spread over seeds
    assert "over seeds 0.7500 ± 0.1414 (0: 0.8500, 1: 0.6500)" in sweep_results.results_markdown(seeds, one_class, "t")
    # a per-pixel MSE keeps 3 significant digits and its spread 2 (0.0034 ± 0.0000 would hide both)
    small = [{"trial": s, "status": "complete", "seed": s, "lr": 0.1, "test/mse": m}
             for s, m in enumerate((0.00335, 0.003351, 0.003358))]  # fmt: skip
    assert "| lr=0.1 | 3 | 0.0033530 ± 0.0000044 |" in sweep_results.results_markdown(small, spec, "t")
    assert "| lr=0.1 | 1 | 0.00336 |" in sweep_results.results_markdown(small[2:], spec, "t")
    nested = [{"trial": 0, "status": "complete", "seed": 0, f"{CODE_SIZE}": 8, "test/mse": 0.3}]
    assert "| model.encoder.out_features=8 | 1 | 0.3000 |" in sweep_results.results_markdown(nested, spec, "t")
    searched = [{"trial": n, "status": "complete", "seed": 0, "lr": lr, "test/mse": 0.1 + n}
                for n, lr in enumerate((0.0027583475549166764, 0.0027583475549166999))]  # fmt: skip
    shown = [
        line for line in sweep_results.results_markdown(searched, spec, "t").splitlines() if line.startswith("| lr=")
    ]
    assert shown == ["| lr=0.002758 | 1 | 0.1000 |", "| lr=0.002758 | 1 | 1.1000 |"]  # 4 digits, two settings
    # an interrupted attempt that a later trial completed is marked superseded and not listed as
    # missing; one not yet run again is, with its setting
    table = [
        {"trial": 0, "status": "failed", "seed": 0, "lr": 0.1, "test/mse": None, "reason": "interrupted"},
        *table,
        {"trial": 5, "status": "failed", "seed": 0, "lr": 0.5, "test/mse": None, "reason": "interrupted"},
    ]
    for n, row in enumerate(table):
        row["trial"] = n
    rows = sweep_results.superseding(table, spec)
    assert [r["status"] for r in rows] == ["superseded", "complete", "complete", "complete", "failed", "failed"]
    assert rows[0]["reason"] == "trial 1 completed this setting and seed (interrupted)"
    pruned = [{"trial": 0, "status": "pruned", "seed": 0, "lr": 0.1, "test/mse": None, "reason": ""},
              {"trial": 1, "status": "complete", "seed": 0, "lr": 0.1, "test/mse": 0.3, "reason": ""}]  # fmt: skip
    assert sweep_results.superseding(pruned, spec)[0]["reason"] == "trial 1 completed this setting and seed (pruned)"
    missing = sweep_results.results_markdown(rows, spec, "t").split("Not completed:")[1]
    assert missing.strip().splitlines() == [
        "- trial 4 (lr=0.01, seed 1): failed: boom",
        "- trial 5 (lr=0.5, seed 0): failed: interrupted",
    ]
    assert "trial 3 (lr=0.01, seed 1): failed: boom" in markdown


def test_a_trials_run_prunes_with_the_sweeps_pruner_and_the_results_say_why(tmp_path, monkeypatch):
    import optuna

    from aelight.sweep.pruning import SweepPruning
    from aelight.sweep.trial import TRIAL_ENV

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = sweep_spec.SweepSpec(path="t", search={"lr": {"low": 1e-4, "high": 1e-2}}, trials=7, prune=True, seeds=[0],
                                direction="minimize", metric="val/loss", report=["val/loss"])  # fmt: skip
    study = sweep_study.open_study(spec, "s", storage, create=True)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2)
    for i in range(5):  # five finished trials, val/loss 0.10 ... 0.14 at every epoch
        values = {epoch: 0.1 + 0.01 * i for epoch in range(4)}
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions={"lr": lr}, value=values[3],
                                                  intermediate_values=values))  # fmt: skip
    trial = study.ask({"lr": lr})
    monkeypatch.setenv(TRIAL_ENV, json.dumps([storage, "s", trial.number]))
    run_trial = SweepPruning(monitor="val/loss")._trial  # the run's view of the trial, in its own process
    for epoch in range(3):  # worse than every earlier trial from the first epoch on
        run_trial.report(0.5, step=epoch)
        # the sweep's pruner waits 2 epochs; Optuna's default pruner would stop at the first
        assert run_trial.should_prune() == (epoch == 2)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    (row,) = [r for r in sweep_results.result_rows(study, spec) if r["status"] == "pruned"]
    assert row["reason"] == "val/loss 0.5 after 3 epochs, worse than the median of earlier trials there"


def test_results_written_while_another_machine_runs_a_trial_list_it_as_running(tmp_path):
    spec = sweep_spec.SweepSpec(path="t", grid={"data.batch_size": [16, 32]}, seeds=[0], direction="minimize",
                                metric="val/mse", report=["val/mse"])  # fmt: skip
    study = sweep_study.open_study(spec, "s", f"sqlite:///{tmp_path / 'study.db'}", create=True)
    done = study.ask()
    done.set_user_attr("metrics", {"0": {"val/mse": 0.02}})
    study.tell(done, 0.02)
    running = study.ask()  # taken by a worker elsewhere, not finished
    running.suggest_categorical("data.batch_size", [16, 32])
    running.suggest_categorical("seed", [0])
    table = sweep_results.result_rows(study, spec)
    assert [r["status"] for r in table] == ["complete", "running"]
    markdown = sweep_results.results_markdown(table, spec, "s")
    assert (
        f"trial {running.number} (data.batch_size=16, seed 0): running: not finished when these results were written"
        in markdown
    )


def test_results_of_a_sweep_as_it_stands_are_written_and_printed_without_starting_or_changing_a_trial(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(REPO)
    path, out = write_spec(tmp_path, {"data.batch_size": [16, 32]}), tmp_path / "sweep"
    with pytest.raises(ConfigError, match=f"no sweep at {out}: run the command without --results first"):
        sweep_command.main([str(path), f"--out={out}", "--results"])
    out.mkdir()
    spec, url = sweep_spec.load_spec(str(path)), f"sqlite:///{out / 'study.db'}"
    study = sweep_study.open_study(spec, "spec", url, create=True)
    for value in (0.02, None):  # one trial complete, one under way on another machine
        trial = study.ask()
        trial.suggest_categorical("data.batch_size", [16, 32])
        seed = trial.suggest_categorical("seed", [0, 1])
        if value:
            trial.set_user_attr("metrics", {str(seed): {"val/mse (last)": value, "val/psnr (last)": 17.0}})
            study.tell(trial, value)
    sweep_command.main([str(path), f"--out={out}", "--results", f"--data.data_dir={tmp_path}"])
    printed = capsys.readouterr().out
    assert "| setting | seeds | val/mse (last) | val/psnr (last) |" in printed and "| 1 | 0.0200 | 17.0000 |" in printed
    assert "running: not finished when these results were written" in printed
    assert [r["status"] for r in rows(out)] == ["complete", "running"]
    after = sweep_study.open_study(spec, "spec", url, create=False).trials
    assert [t.state.name for t in after] == ["COMPLETE", "RUNNING"] and not (out / "runs").exists()
    with pytest.raises(ConfigError, match="holds no sweep other"):
        sweep_command.main([str(path), f"--out={out}", "--results", "--storage", url, "--study_name=other"])


def test_a_sweep_continued_with_other_trial_options_or_another_grid_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = sweep_spec.load_spec(str(write_spec(tmp_path, {"data.batch_size": [16, 32]})))
    study = sweep_study.open_study(spec, "s", f"sqlite:///{tmp_path / 'study.db'}", create=True)
    first = ["--data.data_dir", "/a/data", "--trainer.max_epochs", "2"]
    sweep_study.check_same_trials(study, spec, first, "out")  # records how its trials run
    sweep_study.check_same_trials(
        study, spec, ["--data.data_dir=/b/data", "--trainer.max_epochs=2"], "out"
    )  # another machine
    sweep_study.check_same_trials(
        study, spec, ["--data.data_dir=/c/data", "--trainer.max_epochs=2", "--engine.cuda_graph=true"], "out"
    )  # a GPU machine replaying its steps as CUDA graphs: the same arithmetic
    with pytest.raises(ConfigError, match="this command gives --trainer.max_epochs=2 --engine.compile_step=true"):
        sweep_study.check_same_trials(study, spec, [*first, "--engine.compile_step=true"], "out")
    with pytest.raises(ConfigError, match="run with --trainer.max_epochs=2, this command gives --trainer.max_epochs=3"):
        sweep_study.check_same_trials(study, spec, ["--data.data_dir=/a/data", "--trainer.max_epochs", "3"], "out")
    wider = dataclasses.replace(spec, grid={"data.batch_size": [16, 32, 64]})
    with pytest.raises(ConfigError, match=r"its spec has changed since it started \(grid\)"):
        sweep_study.check_same_trials(study, wider, first, "out")
    sweep_study.check_same_trials(
        study, dataclasses.replace(spec, trials=40, workers_per_device=3), first, "out"
    )  # more trials: fine


def test_each_worker_is_pinned_to_its_gpu_or_to_none_with_its_share_of_the_cores():
    env, options = sweep_workers.worker_placement("2", threads=4)
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert options == ["--trainer.accelerator=gpu", "--trainer.devices=1"]  # device 0 of what it sees: GPU 2
    env, options = sweep_workers.worker_placement(None, threads=1)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    assert options == ["--trainer.accelerator=cpu"]


def test_each_worker_takes_its_share_of_the_cores_unless_omp_num_threads_says_how_many(monkeypatch):
    monkeypatch.setattr(sweep_workers.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [sweep_workers.threads_per_worker(n) for n in (1, 3, 4, 32)] == [16, 5, 4, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's (or a scheduler's) setting wins
    assert [sweep_workers.threads_per_worker(n) for n in (1, 4)] == [2, 2]
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a thread count: the share again
    assert sweep_workers.threads_per_worker(4) == 4


CHILD = """
import os, signal, sys, time
from aelight.runtime import PARENT_ENV, stop_with_parent
def on_sigterm(*_):
    # written whole, then renamed: the test may look between the file's creation and its write
    with open(sys.argv[1] + ".part", "w") as f:
        f.write("stopped")
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    sys.exit(143)
signal.signal(signal.SIGTERM, on_sigterm)
stop_with_parent(int(os.environ[PARENT_ENV]))
print("ready", flush=True)
time.sleep(60)
"""
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env={**os.environ, "%s": str(os.getpid())})
time.sleep(60)
"""


def test_a_worker_or_run_stops_when_its_sweep_is_killed_outright(tmp_path):
    # the sweep's workers and runs ask for SIGTERM on their parent's death: SIGKILL and the
    # out-of-memory killer give the parent no chance to stop them
    from aelight.runtime import PARENT_ENV

    stopped = tmp_path / "stopped"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT % PARENT_ENV, CHILD, str(stopped)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout.readline() == "ready\n"  # the child's, through the inherited pipe
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while not stopped.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert stopped.read_text() == "stopped"


def _take_trials(url: str, spec, worker_index: int) -> None:
    study = sweep_study.open_study(spec, "s", url, create=False, worker_index=worker_index)
    sweep_workers.run_trials(study, spec, lambda trial, params, seeds: time.sleep(0.02 * (trial.number % 3)) or 1.0)


def test_a_worker_waits_out_another_s_write_lock_on_a_sqlite_study_longer_than_the_driver_s_five_seconds(tmp_path):
    import sqlite3
    import threading

    from aelight.sweep.storage import rdb_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_study.open_study(GRID, "s", url, create=True)
    holder = sqlite3.connect(tmp_path / "study.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another worker's write, held past sqlite3's default 5 s
    threading.Timer(6.0, holder.execute, args=("COMMIT",)).start()
    started = time.monotonic()
    storage = rdb_storage(url)
    study_id = storage.get_study_id_from_name("s")
    storage.set_study_user_attr(study_id, "waited", True)  # locked for 6 s: waits, then writes
    assert time.monotonic() - started >= 5.5
    assert storage.get_study_user_attrs(study_id)["waited"] is True


@pytest.mark.parametrize("space", ["grid", "search"])
def test_many_workers_on_one_storage_run_each_trial_of_the_spec_once(tmp_path, space):
    import multiprocessing

    if space == "grid":
        spec = dataclasses.replace(GRID, grid={"data.batch_size": list(range(1, 16))}, seeds=[0, 1])
    else:
        spec = dataclasses.replace(GRID, grid={}, search={"model.init_args.lr": {"low": 0.1, "high": 1.0}}, trials=30)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sweep_study.open_study(spec, "s", url, create=True)
    workers = [multiprocessing.get_context("fork").Process(target=_take_trials, args=(url, spec, i)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 8
    study = sweep_study.open_study(spec, "s", url, create=False)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 30 and sweep_study.left_to_start(study, spec) == 0
    if space == "grid":  # each point and seed once, though Optuna's grid sampler hands out running points again
        assert len({sweep_study.key(t.params) for t in complete}) == 30
    assert len(sweep_results.result_rows(study, spec)) == 30  # spare trials (drawn, not run) are not results


def _take_queued_trials(url: str, spec, worker_index: int, start, ran) -> None:
    study = sweep_study.open_study(spec, "s", url, create=False, worker_index=worker_index)
    start.wait()  # every worker asks for its first trial at the same moment

    def run(trial, params, seeds):
        ran.put((trial.number, params["data.batch_size"]))
        time.sleep(0.2)
        return 1.0

    sweep_workers.run_trials(study, spec, run)


def test_trials_queued_again_are_each_taken_by_one_worker_when_many_ask_at_once(tmp_path):
    import multiprocessing

    # A continued sweep's interrupted trials wait in the queue; on SQLite, which ignores the
    # SELECT ... FOR UPDATE that Optuna takes a queued trial with, two workers asking at once took
    # the same trial and ran it twice, into the same folder.
    spec = dataclasses.replace(GRID, grid={"data.batch_size": list(range(1, 7))})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = sweep_study.open_study(spec, "s", url, create=True)
    for params in spec.planned_points():
        study.enqueue_trial(params)
    fork = multiprocessing.get_context("fork")
    start, ran = fork.Barrier(6), fork.Queue()
    workers = [fork.Process(target=_take_queued_trials, args=(url, spec, i, start, ran)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 6
    runs = [ran.get(timeout=5) for _ in range(6)]
    assert ran.empty()
    assert sorted(number for number, _ in runs) == list(range(6))  # no trial taken by two workers
    assert sorted(size for _, size in runs) == list(range(1, 7))  # and each point run once


def test_an_unforeseen_error_in_a_trial_fails_that_trial_with_its_reason_and_the_worker_goes_on(tmp_path, monkeypatch):
    def unreadable(commands, env, log, continued=False):
        raise ValueError(f"no results for seed {commands[0].argv[-1].split('=')[1]}")

    monkeypatch.setattr(sweep_trial, "run_seed", unreadable)  # the runs' results cannot be read
    spec = dataclasses.replace(GRID, config=["configs/ae.yaml"], command="fit", link={}, options=[])
    study = sweep_study.open_study(spec, "s", f"sqlite:///{tmp_path / 'study.db'}", create=True)
    run = functools.partial(sweep_trial.run_trial, spec=spec, out=tmp_path, extra=[], env={}, storage="s")
    sweep_workers.run_trials(study, spec, run)  # both trials, though each one's results cannot be read
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    reason = study.trials[0].user_attrs["reason"]
    assert reason.startswith("ValueError: no results for seed 0 (its traceback is in ")
    assert reason.endswith("trial_0/output.log)")
    assert "Traceback" in (tmp_path / "runs" / "trial_0" / "output.log").read_text()


def test_a_trial_whose_worker_died_before_drawing_is_set_aside_and_every_point_still_runs(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = sweep_study.open_study(GRID, "s", url, create=True)
    here = study.ask()  # its worker on this machine was killed before it drew its setting
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    here.set_user_attr(sweep_study.RUNNING_HERE, f"{socket.gethostname()}:{gone.pid}")
    lost = study.ask()  # killed between Optuna's ask and the objective's first line: nothing says where
    assert sweep_study.requeue_interrupted(study, url, GRID) == 0  # none was interrupted; both points are queued
    assert [t.state for t in study.trials[:2]] == [TrialState.FAIL, TrialState.RUNNING]
    assert lost.number not in [
        r["trial"] for r in sweep_results.result_rows(study, GRID)
    ]  # no setting: not a result row
    monkeypatch.setattr(sweep_study, "DRAWING_S", 0)  # as a minute later
    sweep_study.requeue_interrupted(study, url, GRID)
    assert study.trials[lost.number].state == TrialState.FAIL
    assert not {here.number, lost.number} & {
        r["trial"] for r in sweep_results.result_rows(study, GRID)
    }  # no rows of theirs
    ran = []
    started = time.time()
    sweep_workers.run_trials(study, GRID, lambda trial, params, seeds: ran.append(params["data.batch_size"]) or 0.02)
    assert sorted(ran) == [16, 32] and time.time() - started < 5  # no trial waits for the lost one


def test_a_trial_whose_machine_went_silent_is_failed_by_its_heartbeat_and_run_again(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setattr(sweep_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_study, "GRACE_S", 2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = sweep_study.open_study(GRID, "s", url, create=True)
    elsewhere = study.ask()  # a worker on another machine drew its setting, beat once, then went silent
    elsewhere.set_user_attr(sweep_study.RUNNING_HERE, "another-machine:1")
    elsewhere.suggest_categorical("data.batch_size", [16, 32])
    elsewhere.suggest_categorical("seed", [0])
    storage = optuna.storages.RDBStorage(url)
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), 0))
    assert sweep_study.left_to_start(study, GRID) == 1  # its point is taken while it may still be running
    time.sleep(3)
    ran = []

    def run(trial, params, seeds):
        ran.append(params["data.batch_size"])
        trial.set_user_attr("metrics", {"0": {"val/mse": 0.02}})
        return 0.02

    sweep_workers.run_trials(study, GRID, run)
    assert sorted(ran) == [16, 32]  # this machine's worker failed it and ran its point too
    (row,) = [r for r in sweep_results.result_rows(study, GRID) if r["trial"] == elsewhere.number]
    assert row["status"] == "superseded" and "(interrupted: its worker stopped" in row["reason"]
    assert "Not completed" not in sweep_results.results_markdown(
        sweep_results.result_rows(study, GRID), GRID, "s"
    )  # run again


def test_the_sweep_and_the_command_table_start_without_torch_or_lightning():
    # the sweep's process and its workers stay light; each worker's forkserver imports the libraries once
    modules = "aelight.commands, aelight.sweep.command, aelight.run_result"
    code = f"import sys, {modules}; print(sorted({{'torch', 'lightning'}} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_the_hparams_view_leads_with_the_metric_names_runs_by_setting_and_lists_failures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from aelight.sweep.hparams_view import write_hparams_view

    spec = sweep_spec.SweepSpec(path="t", metric="test/mse", direction="minimize",
                                report=["val/loss (best)", "test/mse", "test/elbo"])  # fmt: skip
    rows = [
        {"trial": 0, "status": "superseded", "seed": 0, "lr": 0.1, "val/loss (best)": None, "test/mse": None,
         "test/elbo": None, "reason": "trial 2 completed this setting and seed (interrupted)"},
        {"trial": 1, "status": "failed", "seed": 0, "lr": 0.5, "val/loss (best)": None, "test/mse": None,
         "test/elbo": None, "reason": "the loss became NaN"},
        {"trial": 2, "status": "complete", "seed": 0, "lr": 0.1, "val/loss (best)": 0.04, "test/mse": 0.03,
         "test/elbo": None, "reason": ""},
    ]  # fmt: skip
    folder = write_hparams_view(rows, spec, [("lr", "lr")], tmp_path)
    write_hparams_view(rows, spec, [("lr", "lr")], tmp_path)  # written again: replaced, not appended to
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["lr=0.1, seed=0", "lr=0.5, seed=0"]

    def plugin_content(path, tag):
        events = EventAccumulator(str(path))
        events.Reload()
        return events.PluginTagToContent("hparams")[tag]

    experiment = metadata.parse_experiment_plugin_data(plugin_content(folder, metadata.EXPERIMENT_TAG))
    # the spec's metric first, a metric no run logged (test/elbo) left out
    assert [m.name.tag for m in experiment.metric_infos] == ["test/mse", "val/loss (best)"]
    assert [h.name for h in experiment.hparam_infos] == ["lr", "seed", "status", "reason"]
    failed = metadata.parse_session_start_info_plugin_data(
        plugin_content(folder / "lr=0.5, seed=0", metadata.SESSION_START_INFO_TAG)
    )
    assert failed.hparams["status"].string_value == "failed"
    assert failed.hparams["reason"].string_value == "the loss became NaN"
    done = EventAccumulator(str(folder / "lr=0.1, seed=0"))
    done.Reload()
    assert done.Scalars("test/mse")[0].value == pytest.approx(0.03)
    assert not list(tmp_path.glob(".hparams-*"))  # no half-built or old folder left beside it
