"""A sweep's worker processes: where each runs (a GPU or the CPU, its share of the cores), the loop
that takes trials from the study, and how Ctrl-C or SIGTERM stops them and their runs."""

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from aelight.errors import ConfigError
from aelight.runtime import PARENT_ENV
from aelight.sweep.results import progress_line
from aelight.sweep.spec import SweepSpec, load_spec
from aelight.sweep.study import SPARE, left_to_start, open_study
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


def start_workers(places: list, base: list[str], extra: list[str]) -> list:
    """One worker process per entry of ``places`` (a GPU index, or None for the CPU), each with its
    share of the cores; each stops should this process be killed."""
    threads = max(1, (os.cpu_count() or 1) // max(1, len(places)))
    workers = []
    for index, gpu in enumerate(places):
        env, accelerator = worker_placement(gpu, threads)
        command = [*base, f"--worker_index={index}", *accelerator, *extra]
        env |= {PARENT_ENV: str(os.getpid())}
        workers.append(subprocess.Popen(command, env=dict(os.environ) | env))
    return workers


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


def worker(spec_path: str, study_name: str, storage: str, out: str, worker_index: int, extra: list[str]) -> None:
    """One worker process: trials from the study until the spec's are all taken."""
    spec = load_spec(spec_path)
    study = open_study(spec, study_name, storage, create=False, worker_index=worker_index)
    Stop.install()
    run = functools.partial(run_trial, spec=spec, out=Path(out), extra=extra, env=dict(os.environ), storage=storage)
    try:
        run_trials(study, spec, run)
    except KeyboardInterrupt:
        sys.exit(130)


def run_trials(study, spec: SweepSpec, run) -> None:
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
