"""A sweep's Optuna study: opening it, which of the spec's trials are left, and what a stopped or
crashed sweep left behind (run again, never twice)."""

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import optuna
from optuna.trial import TrialState

from aelight.errors import ConfigError
from aelight.sweep.spec import NOT_TRIAL_SETTINGS, SweepSpec, encode, trial_options
from aelight.sweep.storage import rdb_storage

RUNNING_HERE = "worker"  # user attribute: "<host>:<pid>" of the worker running a trial
SPARE = "spare"  # user attribute of a trial a worker asked for when the spec's were all taken: not run
HEARTBEAT_S, GRACE_S = 30, 180  # Optuna's heartbeats: a running trial's worker records one every 30 s
BEATS_PER_GRACE = GRACE_S // HEARTBEAT_S  # a trial silent for this many heartbeats lost its machine
STUDY_FILE = "study.db"  # the study's storage in the sweep's folder, unless --storage names another
PRUNING_MONITOR = "val/loss"  # what a search's pruner compares, epoch by epoch
DRAWING_S = 60  # a trial still drawing its setting after this long lost its worker (drawing takes milliseconds)


@dataclass(frozen=True)
class Machine:
    """This machine as a shared study knows it: ``name`` (its host name unless ``aelight sweep
    --machine`` gives one: two machines must differ) marks the trials its workers run, so that a
    later command here can tell its own dead workers' trials from those running elsewhere; a
    trial running elsewhere that gives no heartbeat for ``stale_after`` seconds lost its machine
    and is run again (``--stale_after``; every machine of a study should give the same)."""

    name: str = field(default_factory=socket.gethostname)
    stale_after: Optional[int] = None  # None: GRACE_S

    def heartbeats(self) -> tuple[int, int]:
        """Optuna's heartbeat interval and grace period, in seconds."""
        if self.stale_after is None:
            return HEARTBEAT_S, GRACE_S
        return max(1, self.stale_after // BEATS_PER_GRACE), self.stale_after


class SweepGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop after each trial: that stop ends a worker once every grid
    point has been visited, though the points of interrupted trials are queued to run again. Workers
    stop when the spec's trials are all taken (``left_to_start``) instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def open_study(
    spec: SweepSpec, name: str, storage: str, create: bool, worker_index: int = 0, machine: Optional[Machine] = None
):
    # Optuna would log each failed or interrupted trial with a traceback; results.md says why in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if spec.search:
        sampler = optuna.samplers.TPESampler(seed=worker_index)  # workers draw different settings
        pruner = search_pruner() if spec.prune else optuna.pruners.NopPruner()
    else:
        space = {key: [encode(v) for v in values] for key, values in spec.grid.items()}
        sampler, pruner = SweepGridSampler({**space, "seed": spec.seeds}, seed=0), None
    storage = sweep_storage(storage, spec, machine or Machine())
    if create:
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=spec.direction,
            load_if_exists=True,
        )  # fmt: skip
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def sweep_storage(url: str, spec: SweepSpec, machine: Machine):
    """The study's storage, with Optuna's heartbeats: the worker of a running trial records one every
    ``HEARTBEAT_S``; a trial with none for ``GRACE_S`` (``machine``'s ``stale_after``: its machine
    crashed or was cut off from a shared storage) is failed by the next worker or command that
    looks, and its setting is queued again (``queue_missing``), on any machine of the sweep."""
    # the heartbeat is experimental in Optuna's terms; aelight's tests hold the behaviour it relies on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    heartbeat, grace = machine.heartbeats()
    return rdb_storage(
        url, heartbeat_interval=heartbeat, grace_period=grace,
        heartbeat_stale_trial_callback=lambda study, trial: queue_missing(study, spec),
    )  # fmt: skip


def search_pruner():
    """The pruner of a search with ``prune: true``: a trial stops when, from its third epoch on, its
    ``PRUNING_MONITOR`` is worse than the median of earlier
    trials at the same epoch (after 5 trials). The sweep's workers and each trial's run use it."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)


def check_same_trials(study, spec: SweepSpec, extra: list[str], out: str) -> bool:
    """A study continued by a later command (or joined from another machine) must run its trials as
    the first command did, or its table would mix them (and a changed grid would run finished
    points again): the same spec and trial options, ``MACHINE_OPTIONS`` aside (the data folder, CUDA-graph
    steps: each machine has its own). A search may be given more ``trials``. Returns True when this
    command is the study's first (it records how its trials run)."""
    mine = json.loads(json.dumps({"spec": spec.settings(), "options": trial_options(extra)}))  # as stored
    recorded = study.user_attrs.get("trials_run_as")
    if recorded is None:
        study.set_user_attr("trials_run_as", mine)
        return True
    recorded = {  # as an earlier aelight recorded them, less what no longer decides how trials run
        "spec": {k: v for k, v in recorded["spec"].items() if k not in NOT_TRIAL_SETTINGS},
        "options": trial_options(recorded["options"]),
    }
    if recorded == mine:
        return False
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


def requeue_interrupted(study, storage_url: str, spec: SweepSpec, machine: Optional[Machine] = None) -> int:
    """What a killed or stopped sweep left behind is run again: RUNNING trials whose worker on this
    machine is gone become failed ("interrupted"); one whose worker died before it drew its setting
    (here or elsewhere) is set aside as spare. Then a continued grid queues each point and seed that
    no trial has run or is running (Optuna's grid sampler counts an interrupted trial's point as
    visited), and a search queues each interrupted setting again. Returns how many interrupted
    trials were queued again."""
    host = (machine or Machine()).name
    storage = rdb_storage(storage_url)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where = t.user_attrs.get(RUNNING_HERE, "")
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        worker_gone = where.startswith(f"{host}:") and not alive(int(where.split(":")[1]))
        if worker_gone and has_drawn(t, spec):
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "reason", "interrupted")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        elif not has_drawn(t, spec) and (worker_gone or not drawing(t)):
            storage.set_trial_user_attr(trial_id, SPARE, True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    optuna.storages.fail_stale_trials(study)  # other machines' trials with no heartbeat for GRACE_S
    queue_missing(study, spec)
    trials = counted(study)
    queued = {key(setting_of(t)) for t in trials if t.state == TrialState.WAITING}
    return len({key(t.params) for t in trials if interrupted(t) and t.params} & queued)


def queue_missing(study, spec: SweepSpec) -> None:
    """Queues what is left to run of a continued sweep: for a grid, each point and seed that no trial
    has run or is running (Optuna's grid sampler counts an interrupted trial's point as visited); for
    a search, each interrupted setting."""
    trials = counted(study)
    stopped = [t.params for t in trials if interrupted(t) and t.params]
    pending = {key(setting_of(t)) for t in trials if t.state == TrialState.WAITING}
    if spec.search:
        pending |= {key(t.params) for t in trials if not interrupted(t)}
        missing = stopped
    else:
        pending |= {key(t.params) for t in trials if (t.state == TrialState.RUNNING or ended(t))}
        missing = spec.planned_points() if trials else []  # a new sweep's points come from the grid sampler
    for params in missing:
        if key(params) not in pending:
            study.enqueue_trial(params)
            pending.add(key(params))


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def alive(pid: int) -> bool:
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


def left_to_start(study, spec: SweepSpec) -> int:
    """How many of the spec's trials no worker has started yet: ended ones (interrupted ones do not
    count) and running ones are taken; queued (WAITING) ones are left."""
    taken = [t for t in counted(study) if t.state == TrialState.RUNNING or ended(t)]
    if spec.search:
        return max(0, spec.planned_trials() - len(taken))
    # a trial that has not yet drawn all its grid values is not counted: at worst a worker asks for
    # one trial too many, which taken_by_another then leaves unrun
    points = {key(t.params) for t in taken if has_drawn(t, spec)}
    return max(0, spec.planned_trials() - len(points))


def taken_by_another(trial, spec: SweepSpec) -> bool:
    """Whether a trial just drawn is one the spec does not need: Optuna's grid sampler hands out a
    running point again when every point has started (more workers than trials left, or several
    machines), and two workers asking at once may draw the same point; a search may be asked for
    more trials than its ``trials`` near its end. Of two trials of one point the earlier runs it."""
    waited_until = time.time() + 10
    while True:
        others = [t for t in counted(trial.study) if t.number != trial.number]
        earlier = [t for t in others if t.number < trial.number and (t.state == TrialState.RUNNING or ended(t))]
        if spec.search:
            return len(earlier) >= spec.trials
        mine = key(trial.params)
        if any(key(t.params) == mine for t in [*earlier, *filter(ended, others)] if has_drawn(t, spec)):
            return True
        # an earlier trial still drawing its values (milliseconds) may draw this point
        if not any(drawing(t) and not has_drawn(t, spec) for t in earlier) or time.time() > waited_until:
            return False
        time.sleep(0.2)


def counted(study) -> list:
    """The study's trials less spare ones (drawn, found not needed, not run)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SPARE)]


def setting_of(trial) -> dict:
    """A trial's parameters: those it drew, or for a queued (WAITING) one those it will run with."""
    return trial.system_attrs.get("fixed_params", {}) if trial.state == TrialState.WAITING else trial.params


def has_drawn(trial, spec: SweepSpec) -> bool:
    """Whether a trial has its whole setting (a grid's values and seed; a search's values)."""
    drawn = set(setting_of(trial))
    return drawn >= ({*spec.grid, *spec.search} if spec.search else {*spec.grid, "seed"})


def drawing(trial) -> bool:
    """Whether a RUNNING trial may still be drawing its setting (rather than have lost its worker)."""
    started = trial.datetime_start
    return trial.state == TrialState.RUNNING and started is not None and time.time() - started.timestamp() < DRAWING_S


def ended(trial) -> bool:
    """Finished for good: an interrupted trial is run again, so it has not ended."""
    return trial.state.is_finished() and not interrupted(trial)


def interrupted(trial) -> bool:
    """Stopped before it could finish: Ctrl-C, SIGTERM or a killed worker (recorded as such), or
    failed with no reason of its own (Optuna's heartbeat check failed it: its worker went silent)."""
    if trial.user_attrs.get("interrupted"):
        return True
    return trial.state == TrialState.FAIL and "reason" not in trial.user_attrs and not trial.user_attrs.get(SPARE)
