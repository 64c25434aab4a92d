"""A sweep's worker processes: where each runs (a GPU or the CPU, its share of the cores), the loop
that takes trials from the study, and how Ctrl-C or SIGTERM stops them and their runs."""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from aelight.errors import AelightError, ConfigError
from aelight.runtime import PARENT_ENV
from aelight.sweep import preflight
from aelight.sweep.results import progress_line
from aelight.sweep.spec import SweepSpec, load_spec
from aelight.sweep.storage import is_storage_error, unreachable
from aelight.sweep.study import (
    RUNNING_HERE,
    SPARE,
    Machine,
    alive,
    counted,
    has_drawn,
    left_to_start,
    open_study,
)  # fmt: skip
from aelight.sweep.trial import TrialFailed, objective, run_trial


class Stop:
    """Ctrl-C or SIGTERM: a KeyboardInterrupt once; the signals after it (a terminal's Ctrl-C reaches
    every process of the sweep, and the sweep then stops its workers too) must not cut short the
    stop they started (each worker stopping and reaping its run, then recording its trial)."""

    stopping = terminated = False

    @classmethod
    def handle(cls, signum, frame) -> None:
        if cls.stopping:
            return
        cls.stopping, cls.terminated = True, signum == signal.SIGTERM
        raise KeyboardInterrupt

    @classmethod
    def install(cls) -> tuple:
        """Handles SIGINT and SIGTERM; returns the handlers it replaced."""
        cls.stopping = cls.terminated = False
        return signal.signal(signal.SIGINT, cls.handle), signal.signal(signal.SIGTERM, cls.handle)


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


def worker_placement(gpu: Optional[str], threads: int) -> tuple[dict, list[str]]:
    """A worker's environment and trainer options: pinned to one GPU (or to no GPU) with its share
    of the cores (on GPUs too: each worker's CPU-side threads would otherwise take every core)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is None:
        return env | {"CUDA_VISIBLE_DEVICES": ""}, ["--trainer.accelerator=cpu"]
    return env | {"CUDA_VISIBLE_DEVICES": gpu}, ["--trainer.accelerator=gpu", "--trainer.devices=1"]


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` workers' share of the cores, or OMP_NUM_THREADS where the environment
    sets it: the threads asked of every torch program started there, a sweep's runs included."""
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    if asked.isdigit() and int(asked) > 0:
        return int(asked)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def start_workers(places: list, base: list[str], extra: list[str], first_index: int = 0) -> list:
    """One worker process per entry of ``places`` (a GPU index, or None for the CPU), each with its
    share of the cores; each stops should this process be killed."""
    return [start_worker(gpu, len(places) + first_index, base, extra, first_index + i) for i, gpu in enumerate(places)]


def start_worker(gpu: Optional[str], workers: int, base: list[str], extra: list[str], index: int, fds=()):
    """A worker process (``workers`` of them share the cores); ``fds`` are handed on to it."""
    env, accelerator = worker_placement(gpu, threads_per_worker(workers))
    command = [*base, f"--worker_index={index}", *accelerator, *extra]
    if fds:
        command.insert(len(base), f"--check_fds={fds[0]},{fds[1]}")
    env |= {PARENT_ENV: str(os.getpid())}
    return subprocess.Popen(command, env=dict(os.environ) | env, pass_fds=fds)


class CheckingWorker:
    """The first worker of a new sweep, started before anything is written: it checks the spec's
    options (``aelight.sweep.preflight``) in its warm forkserver and waits to be told to go on."""

    def __init__(self, gpu: Optional[str], workers: int, base: list[str], extra: list[str]):
        verdict_read, verdict_write = os.pipe()
        go_read, self.go = os.pipe()
        try:
            self.process = start_worker(gpu, workers, base, extra, 0, fds=(verdict_write, go_read))
        finally:
            os.close(verdict_write)
            os.close(go_read)
        self.verdict = verdict_read

    def problem(self) -> Optional[tuple[str, str]]:
        """The check's answer: (what, reason) of the first option refused, or None."""
        with os.fdopen(self.verdict) as answer:
            text = answer.read()
        if not text:  # it ended before it answered
            code = self.process.wait()
            raise AelightError(f"the sweep's first worker ended (exit code {code}) before checking the options")
        found = json.loads(text)
        return tuple(found) if found else None

    def go_on(self, go: bool) -> None:
        """Lets the worker take trials, or (``go`` False) end without doing anything."""
        with os.fdopen(self.go, "w") as answer:
            answer.write("go" if go else "")
        if not go:
            self.process.wait()


def stop_workers(workers: list) -> None:
    for w in workers:  # each stops its trial's run and records the trial as interrupted
        if w.poll() is None:
            w.terminate()
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


STORAGE_LOST = 69  # a worker's exit code when the study's database went away (EX_UNAVAILABLE)


def worker(
    spec_path: str, study_name: str, storage: str, out: str, worker_index: int, extra: list[str], check_fds=None,
    machine: Optional[Machine] = None,
) -> None:  # fmt: skip
    """One worker process: trials from the study until the spec's have all ended. With ``check_fds``
    (the pipes of ``CheckingWorker``) it first checks the spec's options and answers, then waits
    for the sweep's go. If the study's database goes away, it stops with one line (exit code
    ``STORAGE_LOST``); what it was running is not recorded, so the next command runs it again."""
    spec = load_spec(spec_path)
    machine = machine or Machine()
    Stop.install()
    threading.excepthook = _quiet_storage_errors  # Optuna's heartbeat thread meets the lost database first
    try:
        if check_fds:
            verdict, go = check_fds
            with os.fdopen(verdict, "w") as answer:
                answer.write(json.dumps(preflight.problem(spec, extra)))
            with os.fdopen(go) as answer:
                if answer.read() != "go":
                    return
        study = open_study(spec, study_name, storage, create=False, worker_index=worker_index, machine=machine)
        run = functools.partial(
            run_trial, spec=spec, out=Path(out), extra=extra, env=dict(os.environ), storage=storage, machine=machine
        )
        run_trials(study, spec, run, machine)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        if not is_storage_error(err):
            raise
        print(f"aelight sweep: worker {worker_index}: {unreachable(storage, err)}", file=sys.stderr, flush=True)
        sys.exit(STORAGE_LOST)


def _quiet_storage_errors(args) -> None:
    if not is_storage_error(args.exc_value):
        threading.__excepthook__(args)


def run_trials(study, spec: SweepSpec, run, machine: Optional[Machine] = None) -> None:
    """Takes trials from the study, each run by ``run(trial, params, seeds)``, until the spec's are
    all taken; then, while trials run elsewhere (other workers, other machines), waits for them to
    end, running again any whose machine goes silent (its heartbeat older than ``stale_after``)."""
    machine = machine or Machine()

    def stop_when_all_started(study, trial) -> None:
        if trial.user_attrs.get(SPARE):  # nothing was left for this worker to start
            return study.stop()
        print(progress_line(study, trial, spec), file=sys.stderr, flush=True)
        if not left_to_start(study, spec):
            study.stop()

    poll = 1  # seconds between looks at the trials running elsewhere (a light query)
    while True:
        if left_to_start(study, spec):
            study.optimize(
                lambda trial: objective(trial, spec, run, machine),
                callbacks=[stop_when_all_started],
                catch=(TrialFailed,),
            )
        if not running_elsewhere(study, spec, machine):
            return
        time.sleep(poll)
        optuna.storages.fail_stale_trials(study)  # a trial whose heartbeat stopped is failed and queued again


def running_elsewhere(study, spec: SweepSpec, machine: Machine) -> bool:
    """Whether a trial the spec needs is running in another worker or on another machine (a dead
    worker's trial on this machine is not: the next command here runs it again)."""
    for t in counted(study):
        if t.state != TrialState.RUNNING or not has_drawn(t, spec):
            continue
        host, _, pid = t.user_attrs.get(RUNNING_HERE, "").rpartition(":")
        if host != machine.name or (pid.isdigit() and alive(int(pid))):
            return True
    return False
