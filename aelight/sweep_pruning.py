"""The former home of the sweep's pruning callback: run configs saved before ``aelight.sweep``
became a package name ``aelight.sweep_pruning.SweepPruning``."""

from aelight.sweep.pruning import PRUNING_MONITOR, SweepPruning

__all__ = ["PRUNING_MONITOR", "SweepPruning"]
