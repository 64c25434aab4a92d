"""``aelight sweep``'s command line: the options, the checks made before anything starts, the
workers started and stopped, and the results written at the end."""

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

from aelight import safe_files
from aelight.arg_types import number
from aelight.errors import AelightError, ConfigError, one_line_errors
from aelight.runtime import adopt_orphans, reap_orphans
from aelight.sweep import preflight
from aelight.sweep.results import write_results
from aelight.sweep.spec import SweepSpec, as_list, load_spec, trial_options
from aelight.sweep.storage import StorageUnreachable, is_storage_error, open_storage, shown_url, unreachable
from aelight.sweep.study import (
    GRACE_S,
    PRUNING_MONITOR,
    STUDY_FILE,
    Machine,
    check_same_trials,
    counted,
    left_to_start,
    open_study,
    requeue_interrupted,
)  # fmt: skip
from aelight.sweep.workers import STORAGE_LOST, CheckingWorker, Stop, devices, start_workers, stop_workers, worker


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aelight sweep",
        allow_abbrev=False,
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
        "Every grid and search value is checked by the trials' own parser before any trial starts.\n"
        "See configs/sweeps/.\n\n"
        "Any other option is an `aelight fit` option applied to every trial.",
        epilog="Writes <out>/study.db (the Optuna study, unless --storage), <out>/runs/trial_<n>/ (each trial's runs:\n"
        "TensorBoard logs, checkpoints, result.json files, output.log), <out>/results.csv and <out>/results.md.",
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
        "--machine",
        default=None,
        help="this machine's name in a study shared through --storage (default: its host name; two machines "
        "must differ)",
    )
    p.add_argument(
        "--stale_after",
        type=number(int, minimum=2, unit="seconds"),
        default=None,
        help=f"seconds without a heartbeat after which a trial running on another machine counts as lost and "
        f"is run again (default {GRACE_S}; give every machine of a study the same)",
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
    p.add_argument("--check_fds", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list] = None) -> None:
    args, extra = parser().parse_known_args(argv)
    spec = load_spec(args.spec)
    machine = Machine(**({"name": args.machine} if args.machine else {}), stale_after=args.stale_after)
    args.out = str(Path(args.out or Path("sweeps") / Path(args.spec).stem).absolute())
    args.study_name = args.study_name or Path(args.spec).stem
    if args.worker:
        check_fds = tuple(int(fd) for fd in args.check_fds.split(",")) if args.check_fds else None
        return worker(args.spec, args.study_name, args.storage, args.out, args.worker_index, extra, check_fds, machine)
    if args.results:
        return show_results(spec, args, machine)
    # the command line overrides what the spec says of devices and workers
    args.devices = args.devices if args.devices is not None else spec.devices
    if args.workers_per_device is None:
        args.workers_per_device = int(spec.workers_per_device or 1)
    if args.devices is not None and not isinstance(args.devices, str):
        args.devices = ",".join(str(d) for d in as_list(args.devices))
    if args.workers_per_device < 1:
        raise ConfigError(f"--workers_per_device must be at least 1, got {args.workers_per_device}")
    check_no_fast_dev_run(spec, extra)
    gpus = devices(args.devices)  # checked before anything is written
    if args.storage:
        open_storage(args.storage)
    out = Path(args.out)
    study_file = out / STUDY_FILE
    new_sweep = not args.storage and not study_file.is_file()
    args.storage = args.storage or f"sqlite:///{study_file}"
    base = [sys.executable, "-m", "aelight", "sweep", args.spec, "--worker", f"--out={out}",
            f"--storage={args.storage}", f"--study_name={args.study_name}", f"--machine={machine.name}",
            *([f"--stale_after={args.stale_after}"] if args.stale_after else [])]  # fmt: skip
    where = "the CPU" if gpus == [None] else f"GPU {', '.join(gpus)}"

    def placed(left: int) -> list:
        # no more workers than trials to start (each extra one would only find nothing to do), over the devices
        return [gpus[i % len(gpus)] for i in range(min(left, len(gpus) * args.workers_per_device))]

    adopt_orphans()  # each worker's forkserver outlives it by a moment: this process reaps it
    workers, checking, study = [], None, None
    try:
        if new_sweep:  # every grid and search value checked by the trials' parser before anything is written
            checking = checked_first_worker(spec, placed(spec.planned_trials()), base, extra)
            workers.append(checking.process)
        safe_files.check_writable(out, "choose another with --out DIR")
        (out / "runs").mkdir(exist_ok=True)
        study = open_study(spec, args.study_name, args.storage, create=True, machine=machine)
        if check_same_trials(study, spec, extra, args.out) and not new_sweep:  # a shared storage's first command
            checking = checked_first_worker(spec, placed(left_to_start(study, spec)), base, extra)
            workers.append(checking.process)
        requeued = requeue_interrupted(study, args.storage, spec, machine)
        if requeued:
            print(f"aelight sweep: running {requeued} interrupted trial(s) again", file=sys.stderr)
        left = left_to_start(study, spec)
        places = placed(left)
        if left:
            doing = f"{left} of {spec.planned_trials()} trials to run, {len(places)} worker(s) on {where}"
        else:
            doing = f"nothing left to start: each of the spec's {spec.planned_trials()} trials has run or is running"
        print(f"aelight sweep: {doing}; runs under {out / 'runs'}", file=sys.stderr, flush=True)
        if checking is not None:
            checking.go_on(bool(places))
        workers += start_workers(places[len(workers) :], base, extra, first_index=len(workers))
        for w in workers:
            w.wait()
        if any(w.returncode == STORAGE_LOST for w in workers):  # each said so in one line
            raise StorageUnreachable(
                f"the sweep's storage {shown_url(args.storage)} went away; trials under way were not recorded as "
                "completed: run the same command again when the database is back, and they run again"
            )
    except KeyboardInterrupt:  # the workers are stopped below, before the results are written
        print("aelight sweep: stopped; run the same command again to finish the trials left", file=sys.stderr)
        sys.exit(143 if Stop.terminated else 130)  # as a shell reports SIGTERM / Ctrl-C
    except Exception as err:
        if is_storage_error(err):
            raise unreachable(args.storage, err) from None
        raise
    finally:
        stop_workers(workers)
        reap_orphans(timeout=30)
        if study is not None:
            try:
                write_results(study, spec, out, args.study_name)
            except Exception as err:  # the database gone: results.csv keeps what it last said
                if not is_storage_error(err):
                    raise
    states = {t.state for t in counted(study)}
    if TrialState.COMPLETE not in states and not states & {TrialState.RUNNING, TrialState.WAITING}:
        raise AelightError(f"no trial of the sweep completed; {out / 'results.md'} lists why each failed")


def checked_first_worker(spec: SweepSpec, places: list, base: list[str], extra: list[str]) -> CheckingWorker:
    """Starts the sweep's first worker, which checks the spec's options in its warm process; raises
    ConfigError (the worker ended) when one is refused. ``places``: where every worker will run."""
    checking = CheckingWorker(places[0], len(places), base, extra)
    found = checking.problem()
    if found:
        checking.go_on(False)
        raise ConfigError(preflight.message(spec, found))
    return checking


def check_no_fast_dev_run(spec: SweepSpec, extra: list[str]) -> None:
    for given in trial_options([*spec.options, *extra]):
        key, _, value = given.partition("=")
        if key == "--trainer.fast_dev_run" and value.lower() not in ("false", "0"):
            raise ConfigError(
                f"{given}: a fast_dev_run keeps no logs or checkpoints, so a sweep would have nothing to "
                "report; for a quick sweep give --trainer.max_epochs 1 --trainer.limit_train_batches 10"
            )


def show_results(spec: SweepSpec, args: argparse.Namespace, machine: Machine) -> None:
    """``--results``: the study's results as they stand, written and printed; nothing is started or
    changed in the study (a trial under way elsewhere is listed as running)."""
    out, study_file = Path(args.out), Path(args.out) / STUDY_FILE
    if args.storage:
        open_storage(args.storage)
    elif not study_file.is_file():
        raise ConfigError(f"no sweep at {out}: run the command without --results first, or give the sweep's --out")
    try:
        study = open_study(
            spec, args.study_name, args.storage or f"sqlite:///{study_file}", create=False, machine=machine
        )
    except KeyError:  # Optuna's answer for a study that is not in the storage
        raise ConfigError(f"{args.storage or study_file} holds no sweep {args.study_name}") from None
    safe_files.check_writable(out, "choose another with --out DIR")
    write_results(study, spec, out, args.study_name)


def run(argv: Optional[list] = None) -> None:
    """``aelight sweep``: one-line errors for the user's mistakes, as the other commands."""
    previous = Stop.install()
    try:
        with one_line_errors():
            main(argv)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
