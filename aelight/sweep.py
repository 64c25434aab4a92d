"""``aelight sweep``: many runs from one YAML spec, on every device, with Optuna as the engine.

    aelight sweep configs/sweeps/variants.yaml --data.data_dir data/ [--devices 0,1] [--workers_per_device 2]

The spec names what varies (a grid and/or a search space over any ``aelight fit`` option, config
files included), the random seeds, the metric to optimise or report and the number of trials. The
study lives in an Optuna storage (by default ``<out>/study.db``; ``--storage URL`` takes any
database Optuna supports, so several machines join one sweep by running the same command). The
command starts N worker processes per device; each takes trials from the study with Optuna's own
samplers (grid, or TPE for a search, with optuna-integration's Lightning pruning callback) and runs
each as an ordinary ``aelight fit`` (then ``aelight test`` of its best checkpoint) or ``aelight
anomaly``, under ``<out>/runs/trial_<n>/``, in one fresh child of the worker's warm forkserver
(``aelight.trial_process``): the sweep's own processes never import torch or Lightning. At the
end it writes ``results.csv`` (a row per trial and seed: its settings, seed, metrics, status,
seconds, reason, host and device, run folder) and ``results.md`` (mean ± std over seeds per
setting), and prints the latter.

A failed trial (NaN, a setting that cannot work, a killed run) is recorded with its one-line reason
and the others go on (a sweep none of whose trials completed exits with 1); Ctrl-C or SIGTERM stops
the workers and their runs (on Linux they stop too when the sweep is killed outright); running the
same command again runs what is missing (interrupted trials included) and no finished trial twice. A
trial whose worker goes silent (a machine that crashed, on a shared storage) is failed by Optuna's
heartbeat check and run again by the other workers. ``--results`` writes and prints the results of
the study as it stands, starting nothing.
"""

import argparse
import csv
import functools
import io
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

import optuna
import yaml
from optuna.trial import TrialState

from aelight import safe_files
from aelight.errors import AelightError, ConfigError, exit_with_error, user_message
from aelight.runtime import PARENT_ENV, PRUNED_EXIT, adopt_orphans, reap_orphans

# applications that a trial runs on its best checkpoint after fit (their report.json holds the metrics)
APPLIED = ("features", "reduce", "denoise", "nll", "generate")
COMMANDS = ("fit", "anomaly", *APPLIED)
SPEC_KEYS = {"command", "config", "grid", "search", "link", "trials", "seeds", "metric", "direction", "report",
             "options", "app_options", "prune", "description", "devices", "workers_per_device"}  # fmt: skip
APP_DATA_OPTIONS = ("--data.data_dir", "--data.val_size")  # the fit options an application takes too
RUNNING_HERE = "worker"  # user attribute: "<host>:<pid>" of the worker running a trial
SPARE = "spare"  # user attribute of a trial a worker asked for when the spec's were all taken: not run
# metrics (the name after the stage) that are better higher; any other is better lower
HIGHER_IS_BETTER = {"auroc", "mean_auroc", "f1", "precision", "recall", "psnr", "ssim", "elbo", "denoise_psnr",
                    "denoise_ssim", "accuracy", "logistic_regression_test_accuracy", "knn5_test_accuracy",
                    "knn5_val_accuracy", "autoencoder_minus_filter_psnr_db", "mean_top_class_confidence"}  # fmt: skip
# results' status of a trial, from Optuna's state
STATUS = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}
HEARTBEAT_S, GRACE_S = 30, 180  # Optuna's heartbeats: a running trial's worker records one every 30 s
STUDY_FILE = "study.db"  # the study's storage in the sweep's folder, unless --storage names another
DRAWING_S = 60  # a trial still drawing its setting after this long lost its worker (drawing takes milliseconds)
PRUNING_MONITOR = "val/loss"  # what a search's pruner compares, epoch by epoch
# Lines of jsonargparse's explanation that say how it searched, not what is wrong
PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
                "Expected a <class 'NoneType'>", "Given value type:", "Given value:")  # fmt: skip


class SweepGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop after each trial: that stop ends a worker once every grid
    point has been visited, though the points of interrupted trials are queued to run again. Workers
    stop when the spec's trials are all taken (``left_to_start``) instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class TrialFailed(Exception):
    """A trial's run ended without its metric; the message is the one-line reason."""


# --- the spec --------------------------------------------------------------------------------------
def load_spec(path: str) -> dict:
    try:
        with open(path) as f:
            spec = yaml.safe_load(f) or {}
    except OSError as err:
        raise ConfigError(f"sweep spec {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep spec {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep spec {path}: expected a mapping of settings, got {type(spec).__name__}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"sweep spec {path}: unknown key(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    spec.setdefault("command", "fit")
    if spec["command"] not in COMMANDS:
        raise ConfigError(f"sweep spec {path}: command must be one of {COMMANDS}, got {spec['command']!r}")
    for key in ("grid", "search"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ConfigError(f"sweep spec {path}: {key} must be a mapping of options, e.g. {key}: {{lr: ...}}")
    spec["config"] = _as_list(spec.get("config"))
    spec["grid"] = spec.get("grid") or {}
    spec["search"] = spec.get("search") or {}
    spec["seeds"] = _as_list(spec.get("seeds")) or [42]
    spec["options"] = [str(o) for o in _as_list(spec.get("options"))]
    spec["app_options"] = [str(o) for o in _as_list(spec.get("app_options"))]
    if spec["app_options"] and spec["command"] not in APPLIED:
        raise ConfigError(f"sweep spec {path}: app_options are for a command among {APPLIED}, not {spec['command']}")
    for key, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep spec {path}: grid.{key} must be a non-empty list of values")
    for key, space in spec["search"].items():
        if not isinstance(space, dict) or not ({"low", "high"} <= set(space) or "choices" in space):
            raise ConfigError(f"sweep spec {path}: search.{key} needs low and high (and optional log, int), or choices")
    spec["link"] = spec.get("link") or {}
    varied = {*spec["grid"], *spec["search"]}
    if not isinstance(spec["link"], dict) or not all(_is_link(link, varied) for link in spec["link"].values()):
        raise ConfigError(
            f"sweep spec {path}: link maps an option to the grid or search option whose value it takes "
            "(or {from: option, times: k}: k times its value), e.g. "
            "link: {model.init_args.decoder.init_args.in_features: model.init_args.encoder.init_args.out_features}"
        )
    for target, link in spec["link"].items():  # k times a value: a number (k times a string would repeat it)
        if isinstance(link, dict) and not all(map(_is_number, _swept_values(spec, link["from"]))):
            raise ConfigError(f"sweep spec {path}: link {target} takes a multiple of {link['from']}, not a number")
    trials = spec.get("trials")
    if spec["search"] and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise ConfigError(f"sweep spec {path}: a search needs trials: N, a whole number of settings to try")
    if not spec["config"] and "config" not in spec["grid"]:
        raise ConfigError(f"sweep spec {path}: name the base config(s) with config: or grid: {{config: [...]}}")
    spec["config_files"] = {}  # each config as the spec writes it -> the file it names
    for config in [*spec["config"], *spec["grid"].get("config", [])]:
        found = config_file(path, config) if isinstance(config, str) else None
        if found is None:
            raise ConfigError(
                f"sweep spec {path}: config file {config} not found (looked beside the spec, in "
                f"{Path(path).parent.absolute()}, then in the current folder)"
            )
        spec["config_files"][config] = found
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec["seeds"]):
        raise ConfigError(f"sweep spec {path}: seeds must be whole numbers")
    spec.setdefault("metric", "auroc" if spec["command"] == "anomaly" else "test/mse")
    if "direction" not in spec:  # what is better by its name: a score up, an error down
        name = str(spec["metric"]).rsplit("/", 1)[-1].removesuffix("_best")
        spec["direction"] = "maximize" if name in HIGHER_IS_BETTER else "minimize"
    if spec["direction"] not in ("minimize", "maximize"):
        raise ConfigError(f"sweep spec {path}: direction must be minimize or maximize")
    spec["report"] = _as_list(spec.get("report")) or [spec["metric"]]
    if spec["metric"] not in spec["report"]:
        spec["report"].insert(0, spec["metric"])
    if not all(isinstance(m, str) for m in spec["report"]):
        raise ConfigError(f"sweep spec {path}: metric and report name logged metrics, e.g. test/mse")
    return spec


def config_file(spec_path: str, config: str) -> Optional[str]:
    """The file a spec's ``config:`` entry names: relative to the spec file's folder, then to the
    current folder (or absolute); None if neither holds it."""
    for candidate in (Path(spec_path).parent / config, Path(config)):
        if candidate.is_file():
            return str(candidate)
    return None


def _is_link(link, varied: set) -> bool:
    """A link's value: a swept option's name, or ``{from: option, times: k}`` (k a number)."""
    if isinstance(link, str):
        return link in varied
    return (
        isinstance(link, dict)
        and set(link) <= {"from", "times"}
        and link.get("from") in varied
        and _is_number(link.get("times", 1))
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _swept_values(spec: dict, option: str) -> list:
    """The values a grid gives an option, or a search's choices or bounds."""
    if option in spec["grid"]:
        return spec["grid"][option]
    space = spec["search"][option]
    return space["choices"] if "choices" in space else [space["low"], space["high"]]


def _linked_value(link, params: dict):
    """The value a linked option takes from the trial's ``params``: the swept option's value, or k
    times it (a VAE's encoder gives twice the latent size: ``{from: <decoder's input>, times: 2}``)."""
    if isinstance(link, str):
        return params[link]
    value = params[link["from"]] * link.get("times", 1)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _encode(value):
    """A grid value as Optuna keeps it: plain values as they are, lists and mappings as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _option(key: str, value) -> str:
    """An aelight option from a grid or search value: strings (JSON-encoded lists too) as they are."""
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


# --- one trial ---------------------------------------------------------------------------------------
def trial_commands(spec: dict, params: dict, seed: int, run_root: Path, extra: list[str]) -> list[list[str]]:
    """The aelight command lines of one trial and seed (fit then test, or anomaly)."""
    configs = [*spec["config"], *([params["config"]] if "config" in params else [])]
    options = [_option(k, v) for k, v in params.items() if k not in ("config", "seed")]
    options += [_option(target, _linked_value(link, params)) for target, link in spec["link"].items()]
    files = spec.get("config_files", {})
    common = [*(f"--config={files.get(c, c)}" for c in configs), *spec["options"], *options, *extra]
    logged = [f"--trainer.logger.init_args.save_dir={run_root}", "--trainer.enable_progress_bar=false"]
    if spec["command"] == "anomaly":
        return [["anomaly", *common, *logged, f"--seed_everything={seed}", f"--out={run_root / f'report_seed{seed}'}"]]
    name = [f"--trainer.logger.init_args.name=seed{seed}"]
    fit = ["fit", *common, *logged, *name, f"--seed_everything={seed}"]
    if spec.get("prune") and spec["search"]:
        fit.append('--trainer.callbacks+={"class_path": "aelight.sweep_pruning.SweepPruning"}')
    best = run_root / f"seed{seed}" / "version_0" / "checkpoints" / "best.ckpt"
    commands = [fit]
    if any(m.startswith("test/") for m in spec["report"]):
        commands.append(["test", *common, *logged, *name, f"--seed_everything={seed}", f"--ckpt_path={best}"])
    if spec["command"] in APPLIED:  # the application on the best checkpoint, with the data the fit had
        data = [o for o in _trial_options([*spec["options"], *extra], keep_data=True) if o.startswith(APP_DATA_OPTIONS)]
        out = run_root / f"{spec['command']}_seed{seed}"
        commands.append([spec["command"], f"--ckpt_path={best}", *data, *spec["app_options"], f"--out={out}"])
    return commands


def run_metrics(spec: dict, run_root: Path, seed: int) -> dict:
    """The metrics a trial's run logged (last value of each scalar) and, for an anomaly trial or an
    application, what its report.json holds (nested keys joined with /)."""
    if spec["command"] == "anomaly":
        report = json.loads((run_root / f"report_seed{seed}" / "report.json").read_text())
        (digit,) = report["digits"].values()
        return {k: v for k, v in digit.items() if isinstance(v, (int, float))} | {"mean_auroc": report["mean_auroc"]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_root / f"seed{seed}" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    metrics = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    if spec["command"] in APPLIED:
        report = json.loads((run_root / f"{spec['command']}_seed{seed}" / "report.json").read_text())
        metrics |= report_numbers(report)
    return metrics


def report_numbers(report: dict, prefix: str = "") -> dict:
    """The numbers of an application's report, nested keys joined with / (``gaussian_0.5/autoencoder/psnr``)."""
    numbers = {}
    for key, value in report.items():
        if isinstance(value, dict):
            numbers |= report_numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"{prefix}{key}"] = value
    return numbers


def run_commands(commands: list[list[str]], env: dict, log: Path) -> None:
    """Runs a trial's ``aelight`` commands (for one seed) one after the other in one fresh child of
    the worker's warm process (``aelight.trial_process``); their output goes to ``log``. A non-zero
    exit raises TrialFailed (or optuna.TrialPruned) with the run's own one-line reason."""
    from aelight.trial_process import run_commands as run_in_child

    code, last = run_in_child(commands, env, str(log))
    if code == PRUNED_EXIT:
        raise optuna.TrialPruned()
    if code:
        reason = failure_reason(log.read_text(errors="replace"), code)
        raise TrialFailed(f"aelight {commands[last][0]} exited with {code}: {reason}"[:500])


def failure_reason(output: str, code: int) -> str:
    """The one line that says why a run failed: aelight's own message, else the parser's (with the
    lines that explain it), else the last exception line."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("aelight: error:"):
            return line.removeprefix("aelight: error: ")
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            detail = []
            for rest in lines[i + 1 :]:
                if not rest.startswith(" "):
                    break
                rest = rest.strip(" -")
                if not rest.startswith(PARSER_NOISE):
                    detail.append(rest)
            return " ".join([line, *detail])
    errors = [line for line in lines if "Error" in line]
    return (errors or lines or [f"exit code {code}"])[-1]


def objective(trial, spec: dict, run) -> float:
    """Draws a trial's setting (and seed, for a grid) and hands it to ``run(trial, params, seeds)``,
    unless another trial has that setting (``taken_by_another``)."""
    # who runs it, recorded before it draws anything: see requeue_interrupted
    trial.set_user_attr(RUNNING_HERE, f"{socket.gethostname()}:{os.getpid()}")
    params = {key: trial.suggest_categorical(key, [_encode(v) for v in values]) for key, values in spec["grid"].items()}
    for key, space in spec["search"].items():
        if "choices" in space:
            params[key] = trial.suggest_categorical(key, [_encode(v) for v in space["choices"]])
        elif space.get("int"):
            params[key] = trial.suggest_int(key, int(space["low"]), int(space["high"]), log=bool(space.get("log")))
        else:
            params[key] = trial.suggest_float(
                key, float(space["low"]), float(space["high"]), log=bool(space.get("log"))
            )
    # A grid spreads its seeds over trials; a search tries each setting with every seed.
    seeds = [trial.suggest_categorical("seed", spec["seeds"])] if not spec["search"] else spec["seeds"]
    if taken_by_another(trial, spec):
        trial.set_user_attr(SPARE, True)
        raise TrialFailed("not run: another trial runs or ran this setting and seed")
    return run(trial, params, seeds)


def run_trial(trial, params: dict, seeds: list, spec: dict, out: Path, extra: list[str], env: dict, storage: str):
    """One trial as ordinary aelight runs under ``<out>/runs/trial_<n>/``: the mean of its metric over seeds."""
    run_root = out / "runs" / f"trial_{trial.number}"
    run_root.mkdir(parents=True, exist_ok=False)  # each trial its own folder, whatever worker runs it
    trial.set_user_attr("run", str(run_root))
    gpu = env.get("CUDA_VISIBLE_DEVICES")  # the worker's pinning (worker_placement)
    trial.set_user_attr("device", f"{socket.gethostname()} {f'gpu {gpu}' if gpu else 'cpu'}")
    env = {**env, "AELIGHT_SWEEP_TRIAL": json.dumps([storage, trial.study.study_name, trial.number])}
    start, values, per_seed = time.time(), [], {}
    try:
        for seed in seeds:
            run_commands(trial_commands(spec, params, seed, run_root, extra), env, run_root / "output.log")
            metrics = run_metrics(spec, run_root, seed)
            per_seed[str(seed)] = {m: metrics.get(m) for m in spec["report"]}
            value = metrics.get(spec["metric"])
            if value is None:
                logged = ", ".join(sorted(m for m in metrics if "/" in m or spec["command"] == "anomaly"))
                raise TrialFailed(f"the run logged no {spec['metric']} (the spec's metric); it logged {logged}")
            if not math.isfinite(value):
                raise TrialFailed(f"{spec['metric']} is {value}")
            values.append(value)
    except TrialFailed as err:
        trial.set_user_attr("reason", str(err))
        raise
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("reason", "interrupted")
        raise
    except optuna.TrialPruned:
        trial.set_user_attr("reason", "pruned")
        raise
    except Exception as err:  # unforeseen (a run's results unreadable...): this trial fails, the sweep goes on
        with open(run_root / "output.log", "a") as log:
            traceback.print_exc(file=log)
        reason = f"{type(err).__name__}: {err} (its traceback is in {run_root / 'output.log'})"
        trial.set_user_attr("reason", reason[:500])
        raise TrialFailed(reason) from err
    finally:
        trial.set_user_attr("seconds", round(time.time() - start, 2))
        trial.set_user_attr("metrics", per_seed)
    return statistics.fmean(values)


# --- the study ---------------------------------------------------------------------------------------
def open_study(spec: dict, name: str, storage: str, create: bool, worker_index: int = 0):
    # Optuna would log each failed or interrupted trial with a traceback; results.md says why in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if spec["search"]:
        sampler = optuna.samplers.TPESampler(seed=worker_index)  # workers draw different settings
        pruner = search_pruner() if spec.get("prune") else optuna.pruners.NopPruner()
    else:
        space = {key: [_encode(v) for v in values] for key, values in spec["grid"].items()}
        sampler, pruner = SweepGridSampler({**space, "seed": spec["seeds"]}, seed=0), None
    storage = sweep_storage(storage, spec)
    if create:
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=spec["direction"],
            load_if_exists=True,
        )  # fmt: skip
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def sweep_storage(url: str, spec: dict):
    """The study's storage, with Optuna's heartbeats: the worker of a running trial records one every
    ``HEARTBEAT_S``; a trial with none for ``GRACE_S`` (its machine crashed or was cut off from a
    shared storage) is failed by the next worker or command that looks, and its setting is queued
    again (``queue_missing``), on any machine of the sweep."""
    # the heartbeat is experimental in Optuna's terms; aelight's tests hold the behaviour it relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=lambda study, trial: queue_missing(study, spec),
    )  # fmt: skip


def open_storage(url: str):
    """Optuna's storage at ``url``; one clear error when it cannot be opened."""
    try:
        return optuna.storages.get_storage(url)
    except Exception as err:  # SQLAlchemy's and the database drivers' errors have no common base
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"--storage {url}: cannot open it as an Optuna storage ({reason}); give a database URL such as "
            "sqlite:///sweep.db or postgresql://user@host/db"
        ) from None


def search_pruner():
    """The pruner of a search with ``prune: true``: a trial stops when, from its third epoch on, its
    ``PRUNING_MONITOR`` is worse than the median of earlier trials at the same epoch (after 5
    trials). The sweep's workers and each trial's run (``aelight.sweep_pruning``) both use it."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def requeue_interrupted(study, storage_url: str, spec: dict) -> int:
    """What a killed or stopped sweep left behind is run again: RUNNING trials whose worker on this
    machine is gone become failed ("interrupted"); one whose worker died before it drew its setting
    (here or elsewhere) is set aside as spare. Then a continued grid queues each point and seed that
    no trial has run or is running (Optuna's grid sampler counts an interrupted trial's point as
    visited), and a search queues each interrupted setting again. Returns how many interrupted
    trials were queued again."""
    host = socket.gethostname()
    storage = optuna.storages.get_storage(storage_url)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where = t.user_attrs.get(RUNNING_HERE, "")
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        worker_gone = where.startswith(f"{host}:") and not _alive(int(where.split(":")[1]))
        if worker_gone and _has_drawn(t, spec):
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "reason", "interrupted")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        elif not _has_drawn(t, spec) and (worker_gone or not _drawing(t)):
            storage.set_trial_user_attr(trial_id, SPARE, True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)  # other machines' trials with no heartbeat for GRACE_S
    queue_missing(study, spec)
    trials = _counted(study)
    queued = {_key(_setting_of(t)) for t in trials if t.state == TrialState.WAITING}
    return len({_key(t.params) for t in trials if _interrupted(t) and t.params} & queued)


def queue_missing(study, spec: dict) -> None:
    """Queues what is left to run of a continued sweep: for a grid, each point and seed that no trial
    has run or is running (Optuna's grid sampler counts an interrupted trial's point as visited); for
    a search, each interrupted setting."""
    trials = _counted(study)
    interrupted = [t.params for t in trials if _interrupted(t) and t.params]
    pending = {_key(_setting_of(t)) for t in trials if t.state == TrialState.WAITING}
    if spec["search"]:
        pending |= {_key(t.params) for t in trials if not _interrupted(t)}
        missing = interrupted
    else:
        pending |= {_key(t.params) for t in trials if (t.state == TrialState.RUNNING or _ended(t))}
        missing = planned_points(spec) if trials else []  # a new sweep's points come from the grid sampler
    for params in missing:
        if _key(params) not in pending:
            study.enqueue_trial(params)
            pending.add(_key(params))


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    try:  # a killed worker that nobody reaped (a container's init may not) is a zombie: dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def left_to_start(study, spec: dict) -> int:
    """How many of the spec's trials no worker has started yet: ended ones (interrupted ones do not
    count) and running ones are taken; queued (WAITING) ones are left."""
    taken = [t for t in _counted(study) if t.state == TrialState.RUNNING or _ended(t)]
    if spec["search"]:
        return max(0, planned_trials(spec) - len(taken))
    # a trial that has not yet drawn all its grid values is not counted: at worst a worker asks for
    # one trial too many, which taken_by_another then leaves unrun
    points = {_key(t.params) for t in taken if _has_drawn(t, spec)}
    return max(0, planned_trials(spec) - len(points))


def taken_by_another(trial, spec: dict) -> bool:
    """Whether a trial just drawn is one the spec does not need: Optuna's grid sampler hands out a
    running point again when every point has started (more workers than trials left, or several
    machines), and two workers asking at once may draw the same point; a search may be asked for
    more trials than its ``trials`` near its end. Of two trials of one point the earlier runs it."""
    waited_until = time.time() + 10
    while True:
        others = [t for t in _counted(trial.study) if t.number != trial.number]
        earlier = [t for t in others if t.number < trial.number and (t.state == TrialState.RUNNING or _ended(t))]
        if spec["search"]:
            return len(earlier) >= spec["trials"]
        mine = _key(trial.params)
        if any(_key(t.params) == mine for t in [*earlier, *filter(_ended, others)] if _has_drawn(t, spec)):
            return True
        # an earlier trial still drawing its values (milliseconds) may draw this point
        if not any(_drawing(t) and not _has_drawn(t, spec) for t in earlier) or time.time() > waited_until:
            return False
        time.sleep(0.2)


def _counted(study) -> list:
    """The study's trials less spare ones (drawn, found not needed, not run)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SPARE)]


def _setting_of(trial) -> dict:
    """A trial's parameters: those it drew, or for a queued (WAITING) one those it will run with."""
    return trial.system_attrs.get("fixed_params", {}) if trial.state == TrialState.WAITING else trial.params


def _has_drawn(trial, spec: dict) -> bool:
    """Whether a trial has its whole setting (a grid's values and seed; a search's values)."""
    drawn = set(_setting_of(trial))
    return drawn >= ({*spec["grid"], *spec["search"]} if spec["search"] else {*spec["grid"], "seed"})


def _drawing(trial) -> bool:
    """Whether a RUNNING trial may still be drawing its setting (rather than have lost its worker)."""
    started = trial.datetime_start
    return trial.state == TrialState.RUNNING and started is not None and time.time() - started.timestamp() < DRAWING_S


def _ended(trial) -> bool:
    """Finished for good: an interrupted trial is run again, so it has not ended."""
    return trial.state.is_finished() and not _interrupted(trial)


def _interrupted(trial) -> bool:
    """Stopped before it could finish: Ctrl-C, SIGTERM or a killed worker (recorded as such), or
    failed with no reason of its own (Optuna's heartbeat check failed it: its worker went silent)."""
    if trial.user_attrs.get("interrupted"):
        return True
    return trial.state == TrialState.FAIL and "reason" not in trial.user_attrs and not trial.user_attrs.get(SPARE)


def planned_trials(spec: dict) -> int:
    """How many trials the spec asks for: the search's number, or every grid point with every seed."""
    if spec["search"]:
        return spec["trials"]
    return math.prod(len(v) for v in spec["grid"].values()) * len(spec["seeds"])


def planned_points(spec: dict) -> list[dict]:
    """A grid's trials: each point with each seed, as Optuna keeps their parameters."""
    names = [*spec["grid"], "seed"]
    values = [[_encode(v) for v in spec["grid"][k]] for k in spec["grid"]] + [spec["seeds"]]
    return [dict(zip(names, combination)) for combination in itertools.product(*values)]


def progress_line(study, trial, spec: dict) -> str:
    """One line when a trial ends: its status, setting and seed, metric or reason, seconds, and how
    many of the spec's trials have ended."""
    setting = _setting(trial.params, set(), shown=True) or "the base config"
    outcome = f"{spec['metric']} {trial.value:.4g}" if trial.state == TrialState.COMPLETE else _reason(trial)
    ended = sum(_ended(t) for t in _counted(study))
    seconds = trial.user_attrs.get("seconds")
    return (
        f"aelight sweep: trial {trial.number} {STATUS[trial.state.name]} ({setting}): {outcome}"
        f"{f', {seconds:.0f} s' if seconds is not None else ''} [{ended} of {planned_trials(spec)} ended]"
    )


def worker(args: argparse.Namespace, extra: list[str]) -> None:
    """One worker process: trials from the study until the spec's are all taken."""
    spec = load_spec(args.spec)
    study = open_study(spec, args.study_name, args.storage, create=False, worker_index=args.worker_index)
    signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGTERM, _on_stop)
    run = functools.partial(
        run_trial, spec=spec, out=Path(args.out), extra=extra, env=dict(os.environ), storage=args.storage
    )
    try:
        run_trials(study, spec, run)
    except KeyboardInterrupt:
        sys.exit(130)


def run_trials(study, spec: dict, run) -> None:
    """Takes trials from the study, each run by ``run(trial, params, seeds)``, until the spec's are all taken."""

    def stop_when_all_started(study, trial) -> None:
        if trial.user_attrs.get(SPARE):  # nothing was left for this worker to start
            return study.stop()
        print(progress_line(study, trial, spec), file=sys.stderr, flush=True)
        if not left_to_start(study, spec):
            study.stop()

    if left_to_start(study, spec):
        study.optimize(
            lambda trial: objective(trial, spec, run), callbacks=[stop_when_all_started], catch=(TrialFailed,)
        )


# --- results -----------------------------------------------------------------------------------------
def result_rows(study, spec: dict) -> list[dict]:
    rows = []
    for t in sorted(_counted(study), key=lambda t: t.number):
        # a queued trial's setting is fixed before it runs; one that never drew a setting is not the spec's
        params = _setting_of(t)
        if t.state != TrialState.COMPLETE and not _has_drawn(t, spec):
            continue
        per_seed = t.user_attrs.get("metrics") or {}
        seeds = [params["seed"]] if "seed" in params else spec["seeds"]
        for seed in seeds:
            metrics = per_seed.get(str(seed), {})
            row = {"trial": t.number, "status": STATUS[t.state.name], "seed": seed}
            row |= {k: v for k, v in params.items() if k != "seed"}
            row |= {m: metrics.get(m) for m in spec["report"]}
            row |= {"seconds": t.user_attrs.get("seconds"), "reason": _reason(t)}
            row |= {"device": t.user_attrs.get("device", ""), "run": t.user_attrs.get("run", "")}
            rows.append(row)
    return rows


def _reason(trial) -> str:
    """Why a trial did not complete; for a pruned one, what the pruner saw last."""
    if trial.state.name in ("RUNNING", "WAITING"):  # another worker's, here or on another machine
        return "not finished when these results were written; the same command again adds it"
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        epoch = max(trial.intermediate_values)  # the epoch index Lightning's pruning callback reports
        value = trial.intermediate_values[epoch]
        return f"{PRUNING_MONITOR} {value:.4g} after {epoch + 1} epochs, worse than the median of earlier trials there"
    if _interrupted(trial) and "reason" not in trial.user_attrs:
        return "interrupted: its worker stopped without a word (a machine that crashed or was cut off?)"
    return trial.user_attrs.get("reason", "")


def results_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def results_markdown(rows: list[dict], spec: dict, title: str, options: Optional[list] = None) -> str:
    """Mean ± std over seeds of each reported metric per setting, best first; failures below.
    ``options``: the trial options the sweep's command added to the spec, said under the title."""
    fixed = {"trial", "status", "seed", "seconds", "reason", "device", "run", *spec["report"]}
    settings: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "complete":
            settings.setdefault(_setting(row, fixed), []).append(row)
    sign = -1 if spec["direction"] == "maximize" else 1
    ranked = sorted(settings.items(), key=lambda kv: sign * statistics.fmean(r[spec["metric"]] for r in kv[1]))
    lines = [f"# {title}", "", f"{spec['metric']} ({spec['direction']}), mean ± std over seeds.", ""]
    if options:
        lines += [f"Every trial also had {' '.join(options)}.", ""]
    if ranked:
        lines += ["| setting | seeds | " + " | ".join(spec["report"]) + " |", "|---" * (len(spec["report"]) + 2) + "|"]
    else:
        lines += ["No trial has completed."]
    for _, group in ranked:
        cells = [_mean_std([r[m] for r in group if r[m] is not None]) for m in spec["report"]]
        lines.append(
            f"| {_setting(group[0], fixed, shown=True) or '(base)'} | {len(group)} | " + " | ".join(cells) + " |"
        )
    if spec.get("command") == "anomaly" and len(ranked) > 1:  # the one-class protocol's figure: the mean over digits
        means = [statistics.fmean(r[spec["metric"]] for r in group) for _, group in ranked]
        lines += ["", f"Mean {spec['metric']} over the {len(means)} settings: {statistics.fmean(means):.4f}"]
        per_seed = protocol_means(ranked, spec["metric"])
        if len(per_seed) > 1:
            seeds = ", ".join(f"{seed}: {mean:.4f}" for seed, mean in per_seed.items())
            lines[-1] += f"; over seeds {_mean_std(list(per_seed.values()))} ({seeds})"
    # an interrupted trial whose setting and seed a later run of the command completed is history only
    redone = {(key, r["seed"]) for key, group in settings.items() for r in group}
    failed = [
        r
        for r in rows
        if r["status"] != "complete"
        and not (r.get("reason", "").startswith("interrupted") and (_setting(r, fixed), r["seed"]) in redone)
    ]
    if failed:
        lines += ["", "Not completed:", ""]
        lines += [
            f"- trial {r['trial']} (seed {r['seed']}): {r['status']}: {r['reason'] or 'no reason recorded'}"
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def protocol_means(ranked: list, metric: str) -> dict:
    """Per seed, the mean of ``metric`` over every setting (the one-class protocol's mean AUROC over
    the digits), for the seeds that completed every setting."""
    by_seed: dict = {}
    for _, group in ranked:
        for row in group:
            by_seed.setdefault(row["seed"], []).append(row[metric])
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items()) if len(v) == len(ranked)}


def _setting(row: dict, fixed: set, shown: bool = False) -> str:
    """A row's options and values; ``shown``: as tables show them, a search's floats to 4 digits
    (results.csv keeps every digit)."""
    if not shown:
        return ", ".join(f"{k}={v}" for k, v in row.items() if k not in fixed)
    return ", ".join(
        f"{_shown(k)}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in row.items() if k not in fixed
    )


def _shown(key: str) -> str:
    """An option as tables and progress lines show it: without its ``init_args.`` (results.csv keeps them)."""
    return key.replace("init_args.", "")


def _mean_std(values: list) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


# --- the command -------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aelight sweep",
        description="Many runs from one YAML spec, on every device, with Optuna as the engine.\n\n"
        "The spec's keys: config (base config files, found beside the spec, then in the current folder),\n"
        "grid ({option: [values]}, config files too),\n"
        "search ({option: {low, high, log, int} or {choices}}) with trials (neither: the base config once\n"
        "per seed), link ({option: grid or search option whose value it takes, or {from: option, times: k}}),\n"
        "seeds, metric, direction (default: up for scores such as auroc, psnr, ssim, elbo; down for errors\n"
        "and losses), report (the columns of results), options (for every trial), prune (a search: stop a\n"
        f"trial whose {PRUNING_MONITOR} trails the median from its third epoch on; with several seeds the first\n"
        "one's epochs decide), command (fit: fit then test the best checkpoint; anomaly; or an application,\n"
        "features, reduce, denoise, nll or generate: fit, then the application on the best checkpoint, its\n"
        "report's numbers as metrics), app_options (the application's own options), devices,\n"
        "workers_per_device.\n"
        "See configs/sweeps/.\n\n"
        "Any other option is an `aelight fit` option applied to every trial.",
        epilog="Writes <out>/study.db (the Optuna study, unless --storage), <out>/runs/trial_<n>/ (each trial's runs:\n"
        "TensorBoard logs, checkpoints, output.log), <out>/results.csv and <out>/results.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="the sweep's YAML spec, e.g. configs/sweeps/variants.yaml")
    p.add_argument("--out", default=None, help="the sweep's folder (default: sweeps/<spec name>/)")
    p.add_argument(
        "--devices",
        default=None,
        help="cpu, or GPU indices 0,1,... (default: the spec's devices, else every GPU, else cpu)",
    )
    p.add_argument(
        "--workers_per_device",
        "--workers-per-device",
        type=int,
        default=None,
        help="trials run at once per device (default: the spec's workers_per_device, else 1)",
    )
    p.add_argument(
        "--storage", default=None, help="an Optuna storage URL shared by several machines (default: <out>/study.db)"
    )
    p.add_argument(
        "--results",
        action="store_true",
        help="write and print results.csv and results.md of the study as it stands, starting no trial "
        "(e.g. while other machines work on a shared --storage); any aelight fit option is ignored",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--study_name", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker_index", type=int, default=0, help=argparse.SUPPRESS)
    return p


def devices(text: Optional[str]) -> list[Optional[str]]:
    """GPU indices as strings, or [None] for the CPU."""
    if text == "cpu":
        return [None]
    import torch  # to count the GPUs (no CUDA context is made); the workers never import it

    if text is None:
        return [str(i) for i in range(torch.cuda.device_count())] or [None]
    indices = [d.strip() for d in text.split(",") if d.strip()]
    if not indices or not all(d.isdigit() for d in indices):
        raise ConfigError(f"--devices {text}: give cpu or GPU indices such as 0,1")
    if max(int(d) for d in indices) >= torch.cuda.device_count():
        raise ConfigError(f"--devices {text}: this machine has {torch.cuda.device_count()} GPU(s)")
    return indices


def main(argv: Optional[list] = None) -> None:
    args, extra = parser().parse_known_args(argv)
    spec = load_spec(args.spec)
    args.out = str(Path(args.out or Path("sweeps") / Path(args.spec).stem).absolute())
    args.study_name = args.study_name or Path(args.spec).stem
    if args.worker:
        return worker(args, extra)
    if args.results:
        return show_results(spec, args)
    # the command line overrides what the spec says of devices and workers
    args.devices = args.devices if args.devices is not None else spec.get("devices")
    if args.workers_per_device is None:
        args.workers_per_device = int(spec.get("workers_per_device") or 1)
    if args.devices is not None and not isinstance(args.devices, str):
        args.devices = ",".join(str(d) for d in _as_list(args.devices))
    if args.workers_per_device < 1:
        raise ConfigError(f"--workers_per_device must be at least 1, got {args.workers_per_device}")
    for option in _trial_options([*spec["options"], *extra]):
        key, _, value = option.partition("=")
        if key == "--trainer.fast_dev_run" and value.lower() not in ("false", "0"):
            raise ConfigError(
                f"{option}: a fast_dev_run keeps no logs or checkpoints, so a sweep would have nothing to "
                "report; for a quick sweep give --trainer.max_epochs 1 --trainer.limit_train_batches 10"
            )
    gpus = devices(args.devices)  # checked before anything is written
    if args.storage:
        open_storage(args.storage)
    out = Path(args.out)
    safe_files.check_writable(out, "choose another with --out DIR")
    (out / "runs").mkdir(exist_ok=True)
    args.storage = args.storage or f"sqlite:///{out / STUDY_FILE}"
    study = open_study(spec, args.study_name, args.storage, create=True)
    check_same_trials(study, spec, extra, args.out)
    requeued = requeue_interrupted(study, args.storage, spec)
    if requeued:
        print(f"aelight sweep: running {requeued} interrupted trial(s) again", file=sys.stderr)
    where = "the CPU" if gpus == [None] else f"GPU {', '.join(gpus)}"
    left = left_to_start(study, spec)
    # no more workers than trials to start (each extra one would only find nothing to do), spread over the devices
    places = [gpus[i % len(gpus)] for i in range(min(left, len(gpus) * args.workers_per_device))]
    if left:
        doing = f"{left} of {planned_trials(spec)} trials to run, {len(places)} worker(s) on {where}"
    else:
        doing = f"nothing left to start: each of the spec's {planned_trials(spec)} trials has run or is running"
    print(f"aelight sweep: {doing}; runs under {out / 'runs'}", file=sys.stderr, flush=True)
    workers = []
    threads = max(1, (os.cpu_count() or 1) // max(1, len(places)))
    base = [sys.executable, "-m", "aelight", "sweep", args.spec, "--worker", f"--out={out}",
            f"--storage={args.storage}", f"--study_name={args.study_name}"]  # fmt: skip
    adopt_orphans()  # each worker's forkserver outlives it by a moment: this process reaps it
    try:
        for index, gpu in enumerate(places):
            env, accelerator = worker_placement(gpu, threads)
            command = [*base, f"--worker_index={index}", *accelerator, *extra]
            env |= {PARENT_ENV: str(os.getpid())}  # each worker stops should this process be killed
            workers.append(subprocess.Popen(command, env=dict(os.environ) | env))
        for w in workers:
            w.wait()
    except KeyboardInterrupt:  # the workers are stopped below, before the results are written
        print("aelight sweep: stopped; run the same command again to finish the trials left", file=sys.stderr)
        sys.exit(143 if _terminated else 130)  # as a shell reports SIGTERM / Ctrl-C
    finally:
        _stop(workers)
        reap_orphans(timeout=30)
        write_results(study, spec, out, args.study_name)
    states = {t.state for t in _counted(study)}
    if TrialState.COMPLETE not in states and not states & {TrialState.RUNNING, TrialState.WAITING}:
        raise AelightError(f"no trial of the sweep completed; {out / 'results.md'} lists why each failed")


def show_results(spec: dict, args: argparse.Namespace) -> None:
    """``--results``: the study's results as they stand, written and printed; nothing is started or
    changed in the study (a trial under way elsewhere is listed as running)."""
    out, study_file = Path(args.out), Path(args.out) / STUDY_FILE
    if args.storage:
        open_storage(args.storage)
    elif not study_file.is_file():
        raise ConfigError(f"no sweep at {out}: run the command without --results first, or give the sweep's --out")
    try:
        study = open_study(spec, args.study_name, args.storage or f"sqlite:///{study_file}", create=False)
    except KeyError:  # Optuna's answer for a study that is not in the storage
        raise ConfigError(f"{args.storage or study_file} holds no sweep {args.study_name}") from None
    safe_files.check_writable(out, "choose another with --out DIR")
    write_results(study, spec, out, args.study_name)


def check_same_trials(study, spec: dict, extra: list[str], out: str) -> None:
    """A study continued by a later command (or joined from another machine) must run its trials as
    the first command did, or its table would mix them (and a changed grid would run finished
    points again): the same spec and trial options, the data folder aside (each machine has its
    own). A search may be given more ``trials``."""
    settings = {k: v for k, v in spec.items() if k not in ("description", "devices", "workers_per_device", "trials")}
    mine = json.loads(json.dumps({"spec": settings, "options": _trial_options(extra)}))  # as the storage keeps it
    recorded = study.user_attrs.get("trials_run_as")
    if recorded is None:
        study.set_user_attr("trials_run_as", mine)
        return
    if recorded == mine:
        return
    if recorded["options"] != mine["options"]:
        was, now = " ".join(recorded["options"]) or "no options", " ".join(mine["options"]) or "no options"
        what = f"its trials were run with {was}, this command gives {now}"
    else:
        was, now = recorded["spec"], mine["spec"]
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        what = f"its spec has changed since it started ({', '.join(changed)})"
    raise ConfigError(
        f"sweep {out} (study {study.study_name}): {what}; run it as it started, or give another --out "
        "(and --storage) for a new sweep"
    )


def _trial_options(extra: list[str], keep_data: bool = False) -> list[str]:
    """The trial options of a sweep's command line, each as --key=value, without the data folder
    (unless ``keep_data``)."""
    options, i = [], 0
    while i < len(extra):
        option = extra[i]
        if "=" not in option and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            option, i = f"{option}={extra[i + 1]}", i + 1
        if keep_data or not option.startswith("--data.data_dir"):
            options.append(option)
        i += 1
    return options


def worker_placement(gpu: Optional[str], threads: int) -> tuple[dict, list[str]]:
    """A worker's environment and trainer options: pinned to one GPU (or to no GPU) with its share
    of the cores (on GPUs too: each worker's CPU-side threads would otherwise take every core)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is None:
        return env | {"CUDA_VISIBLE_DEVICES": ""}, ["--trainer.accelerator=cpu"]
    return env | {"CUDA_VISIBLE_DEVICES": gpu}, ["--trainer.accelerator=gpu", "--trainer.devices=1"]


def _stop(workers: list) -> None:
    for w in workers:  # each stops its trial's run and records the trial as interrupted
        if w.poll() is None:
            w.terminate()
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def write_results(study, spec: dict, out: Path, title: str) -> None:
    rows = result_rows(study, spec)
    safe_files.write_text(out / "results.csv", results_csv(rows), what="results")
    markdown = results_markdown(rows, spec, title, study.user_attrs.get("trials_run_as", {}).get("options"))
    safe_files.write_text(out / "results.md", markdown, what="results")
    print(markdown + f"\nwritten to {out}/results.csv and {out}/results.md; the runs side by side (HParams): "
          f"tensorboard --logdir {out}/runs")  # fmt: skip


_stopping = _terminated = False


def _on_stop(signum, frame) -> None:
    """Ctrl-C or SIGTERM: a KeyboardInterrupt once; the signals after it (a terminal's Ctrl-C reaches
    every process of the sweep, and the sweep then stops its workers too) must not cut short the
    stop they started (each worker stopping and reaping its run, then recording its trial)."""
    global _stopping, _terminated
    if _stopping:
        return
    _stopping, _terminated = True, signum == signal.SIGTERM
    raise KeyboardInterrupt


def run(argv: Optional[list] = None) -> None:
    """``aelight sweep``: one-line errors for the user's mistakes, as the other commands."""
    global _stopping, _terminated
    _stopping = _terminated = False
    previous = signal.signal(signal.SIGINT, _on_stop), signal.signal(signal.SIGTERM, _on_stop)
    try:
        main(argv)
    except (AelightError, OSError) as err:
        message = user_message(err)
        if message is None:
            raise
        exit_with_error(message)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
