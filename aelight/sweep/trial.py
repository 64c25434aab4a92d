"""One trial of a sweep: its setting drawn from the study, its runs (fit, then test or the
application, per seed) in a child of the worker's warm process, and its metrics read from the
runs' result.json files."""

import json
import math
import os
import signal
import statistics
import time
import traceback
from pathlib import Path
from typing import Optional

import optuna

from aelight import run_result
from aelight.run import folders
from aelight.sweep import study as sweep_study
from aelight.sweep.spec import (
    APP_DATA_OPTIONS,
    APPLIED,
    FIT_METRICS,
    SweepSpec,
    encode,
    linked_value,
    option,
    trial_options,
)
from aelight.sweep.study import RUNNING_HERE, SPARE, Machine, interrupted, taken_by_another
from aelight.sweep.trial_process import BEST_CHECKPOINT, TrialCommand
from aelight.sweep.trial_process import run_commands as run_in_child

TRIAL_ENV = "AELIGHT_SWEEP_TRIAL"  # storage URL, study name and trial number, for a run's pruning callback
PRUNING_CALLBACK = '--trainer.callbacks+={"class_path": "aelight.sweep.pruning.SweepPruning"}'


class TrialFailed(Exception):
    """A trial's run ended without its metric; the message is the one-line reason."""


def trial_commands(
    spec: SweepSpec, params: dict, seed: int, run_root: Path, extra: list[str], resume: Optional[Path] = None
) -> list[TrialCommand]:
    """The aelight commands of one trial and seed (fit then test, or anomaly), each with the file
    its result.json goes to; the fit continues from ``resume`` (an interrupted attempt's last
    checkpoint in ``run_root``) when given."""
    configs = [*spec.config, *([params["config"]] if "config" in params else [])]
    options = [option(k, v) for k, v in params.items() if k not in ("config", "seed")]
    options += [option(target, linked_value(link, params)) for target, link in spec.link.items()]
    files = spec.config_files
    common = [*(f"--config={files.get(c, c)}" for c in configs), *spec.options, *options, *extra]
    logged = [f"--trainer.logger.init_args.save_dir={run_root}", "--trainer.enable_progress_bar=false"]

    def result_file(command: str) -> str:
        return str(run_root / "results" / f"seed{seed}_{command}.json")

    if spec.command == "anomaly":
        logged = logged if spec.trains else []  # nothing trained, nothing logged
        argv = ["anomaly", *common, *logged, f"--seed_everything={seed}", f"--out={run_root / f'report_seed{seed}'}"]
        return [TrialCommand(argv, result_file("anomaly"))]
    if not spec.trains:  # a baseline or untrained network: the application alone, its options and data
        out = run_root / f"{spec.command}_seed{seed}"
        own = application_options(trial_options(common, keep_machine=True))
        argv = [spec.command, *own, *spec.app_options, f"--seed_everything={seed}", f"--out={out}"]
        return [TrialCommand(argv, result_file(spec.command))]
    name = [f"--trainer.logger.init_args.name=seed{seed}"]
    fit = ["fit", *common, *logged, *name, f"--seed_everything={seed}"]
    if resume is not None:
        fit.append(f"--ckpt_path={resume}")
    if spec.prune and spec.search:
        fit.append(PRUNING_CALLBACK)
    commands = [TrialCommand(fit, result_file("fit"))]
    if any(m.startswith("test/") for m in spec.report):
        test = ["test", *common, *logged, *name, f"--seed_everything={seed}", f"--ckpt_path={BEST_CHECKPOINT}"]
        commands.append(TrialCommand(test, result_file("test")))
    if spec.command in APPLIED:  # the application on the best checkpoint, with the data the fit had
        data = [o for o in trial_options([*spec.options, *extra], keep_machine=True) if o.startswith(APP_DATA_OPTIONS)]
        out = run_root / f"{spec.command}_seed{seed}"
        argv = [spec.command, f"--ckpt_path={BEST_CHECKPOINT}", *data, *spec.app_options, f"--out={out}"]
        commands.append(TrialCommand(argv, result_file(spec.command)))
    return commands


def application_options(options: list[str]) -> list[str]:
    """A trial's options (each ``--key=value``) as an application that trains nothing takes them: the
    worker's placement as ``--device`` (a worker sees only its own GPU, as cuda), no trainer option."""
    kept = []
    for given in options:
        if given.startswith("--trainer.accelerator="):
            kept.append("--device=cpu" if given.endswith("=cpu") else "--device=cuda")
        elif not given.startswith("--trainer."):
            kept.append(given)
    return kept


def earlier_attempt(trial, spec: SweepSpec) -> Optional[Path]:
    """The run folder of the newest interrupted trial of this setting whose fits left a last
    checkpoint, or None. This trial continues those runs in that folder: Lightning keeps a run's
    record of its best checkpoint only where the run wrote it, so a run continued elsewhere could
    name a worse checkpoint best than the uninterrupted run would have. An application that trains
    inside its own command (``anomaly``) starts again."""
    if spec.command == "anomaly" or not spec.trains:
        return None
    mine = sweep_study.key(trial.params)
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number and interrupted(t)]
    for t in sorted(earlier, key=lambda t: t.number, reverse=True):
        run = t.user_attrs.get("run")
        if run and sweep_study.key(t.params) == mine and any(map(last_checkpoint, Path(run).glob("seed*"))):
            return Path(run)
    return None


def last_checkpoint(seed_folder: Path) -> Optional[Path]:
    """The newest run's last.ckpt under one seed's folder (an experiment's folder of runs), or None."""
    return folders.newest_checkpoint(seed_folder, "last")


def values_by_name(result: run_result.RunResult) -> dict:
    """A run's metrics by the names a spec gives them: each logged name, and a fit's validation and
    training metrics also as ``NAME (last)`` (the last epoch's) and ``NAME (best)`` (the best
    epoch's, as the checkpoint monitor kept it or the model logged it as ``NAME_best``)."""
    values = result.all_metrics()
    final, best = result.metrics.get("final", {}), result.metrics.get("best", {})
    for name, value in final.items():
        if name.startswith(FIT_METRICS) and not name.endswith("_best"):
            values[f"{name} (last)"] = value
            if best.get(name, final.get(f"{name}_best")) is not None:
                values[f"{name} (best)"] = best.get(name, final.get(f"{name}_best"))
    return values


def completed_fit(command: TrialCommand) -> Optional[run_result.RunResult]:
    """The result of an interrupted attempt's fit that had completed (its test or application had
    not), or None: continuing that fit from its last checkpoint would train no epoch and log nothing."""
    if command.argv[0] != "fit":
        return None
    try:
        result = run_result.read(command.result_file)
    except (OSError, ValueError):
        return None
    return result if result.status == run_result.COMPLETED else None


def run_seed(commands: list[TrialCommand], env: dict, log: Path, continued: bool = False) -> dict:
    """Runs one seed's commands in a fresh child of the worker's warm process, and returns the
    metrics their results hold (a later command's name wins). A run that did not complete raises
    TrialFailed (or optuna.TrialPruned) with its own one-line reason. ``continued``: the commands
    continue an interrupted attempt's, whose completed fit is kept rather than run again."""
    Path(commands[0].result_file).parent.mkdir(parents=True, exist_ok=True)
    fitted = completed_fit(commands[0]) if continued else None
    metrics: dict = values_by_name(fitted) if fitted else {}
    if fitted:
        best = fitted.checkpoints.get("best") or BEST_CHECKPOINT  # none: the command says the fit wrote none
        after_fit = commands[1:]
        commands = [TrialCommand([a.replace(BEST_CHECKPOINT, best) for a in c.argv], c.result_file) for c in after_fit]
    for command in commands:  # a result left by an earlier attempt says nothing of this one
        Path(command.result_file).unlink(missing_ok=True)
    code = run_in_child(commands, env, str(log)) if commands else 0
    for command in commands:
        try:
            result = run_result.read(command.result_file)
        except (OSError, ValueError):
            raise TrialFailed(f"aelight {command.argv[0]} {_ended_how(code)} before it wrote its result; see {log}")
        if result.status == run_result.PRUNED:
            raise optuna.TrialPruned()
        if result.status != run_result.COMPLETED:
            ended = "exited with" if result.status == run_result.FAILED else f"{result.status}, exit code"
            raise TrialFailed(f"aelight {result.command} {ended} {result.exit_code}: {result.reason}"[:500])
        metrics |= values_by_name(result)
        if result.command == "anomaly":  # one digit's numbers by their own names (auroc, f1...)
            digits = {k.split("/")[1] for k in result.metrics["report"] if k.startswith("digits/")}
            if len(digits) == 1:
                prefix = f"digits/{digits.pop()}/"
                metrics |= {
                    k.removeprefix(prefix): v for k, v in result.metrics["report"].items() if k.startswith(prefix)
                }
    if code:
        raise TrialFailed(f"the trial's runs {_ended_how(code)}; see {log}")
    return metrics


def _ended_how(code: int) -> str:
    if code < 0:
        with_name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return f"was killed by {with_name}"
    return f"exited with {code}"


def objective(trial, spec: SweepSpec, run, machine: Optional[Machine] = None) -> float:
    """Draws a trial's setting (and seed, for a grid) and hands it to ``run(trial, params, seeds)``,
    unless another trial has that setting (``taken_by_another``)."""
    # who runs it, recorded before it draws anything: see requeue_interrupted
    trial.set_user_attr(RUNNING_HERE, f"{(machine or Machine()).name}:{os.getpid()}")
    params = {key: trial.suggest_categorical(key, [encode(v) for v in values]) for key, values in spec.grid.items()}
    for key, space in spec.search.items():
        if "choices" in space:
            params[key] = trial.suggest_categorical(key, [encode(v) for v in space["choices"]])
        elif space.get("int"):
            params[key] = trial.suggest_int(key, int(space["low"]), int(space["high"]), log=bool(space.get("log")))
        else:
            params[key] = trial.suggest_float(
                key, float(space["low"]), float(space["high"]), log=bool(space.get("log"))
            )
    # A grid spreads its seeds over trials; a search tries each setting with every seed.
    seeds = [trial.suggest_categorical("seed", spec.seeds)] if not spec.search else spec.seeds
    if taken_by_another(trial, spec):
        trial.set_user_attr(SPARE, True)
        raise TrialFailed("not run: another trial runs or ran this setting and seed")
    return run(trial, params, seeds)


def run_trial(
    trial, params: dict, seeds: list, spec: SweepSpec, out: Path, extra: list[str], env: dict, storage: str,
    machine: Optional[Machine] = None,
):  # fmt: skip
    """One trial as ordinary aelight runs under ``<out>/runs/trial_<n>/`` (or, when it runs again the
    setting of an interrupted trial whose fits left last checkpoints, under that trial's folder,
    each fit continuing from its last checkpoint): the mean of its metric over seeds."""
    continued = earlier_attempt(trial, spec)
    run_root = continued or out / "runs" / f"trial_{trial.number}"
    if continued is None:
        run_root.mkdir(parents=True, exist_ok=False)  # each trial its own folder, whatever worker runs it
    trial.set_user_attr("run", str(run_root))
    gpu = env.get("CUDA_VISIBLE_DEVICES")  # the worker's pinning (worker_placement)
    trial.set_user_attr("device", f"{(machine or Machine()).name} {f'gpu {gpu}' if gpu else 'cpu'}")
    env = {**env, TRIAL_ENV: json.dumps([storage, trial.study.study_name, trial.number])}
    start, values, per_seed = time.time(), [], {}
    try:
        for seed in seeds:
            resume = last_checkpoint(run_root / f"seed{seed}") if continued else None
            if resume is not None:
                trial.set_user_attr("resumed", {**trial.user_attrs.get("resumed", {}), str(seed): str(resume)})
                with open(run_root / "output.log", "a") as log:
                    log.write(f"aelight sweep: trial {trial.number} continues seed {seed}'s fit from {resume}\n")
            commands = trial_commands(spec, params, seed, run_root, extra, resume=resume)
            metrics = run_seed(commands, env, run_root / "output.log", continued=resume is not None)
            per_seed[str(seed)] = {m: v for m, v in metrics.items() if isinstance(v, (int, float))}
            value = metrics.get(spec.metric)
            if value is None:
                logged = ", ".join(sorted(m for m in metrics if "/" in m or spec.command == "anomaly"))
                raise TrialFailed(f"the run logged no {spec.metric} (the spec's metric); it logged {logged}")
            if not math.isfinite(value):
                raise TrialFailed(f"{spec.metric} is {value}")
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
