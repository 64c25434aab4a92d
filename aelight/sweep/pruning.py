"""The pruning callback of a run that ``aelight sweep`` started for a search (imported by that run
only, so that ordinary runs and the sweep's own processes never import Optuna's Lightning callback)."""

import json
import os

import optuna
from optuna_integration import PyTorchLightningPruningCallback

from aelight.sweep.storage import rdb_storage
from aelight.sweep.study import PRUNING_MONITOR, search_pruner
from aelight.sweep.trial import TRIAL_ENV

__all__ = ["PRUNING_MONITOR", "SweepPruning"]


class SweepPruning(PyTorchLightningPruningCallback):
    """optuna-integration's Lightning pruning callback on ``monitor`` for the sweep trial this run
    belongs to; a pruned run ends with exit code 3 and a result.json saying ``pruned``."""

    def __init__(self, monitor: str = PRUNING_MONITOR):
        storage_url, study_name, number = json.loads(os.environ[TRIAL_ENV])
        # The sweep's pruner: a study loaded without one would judge with Optuna's default.
        storage = rdb_storage(storage_url)
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=search_pruner())
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
        super().__init__(optuna.trial.Trial(study, trial_id), monitor=monitor)
