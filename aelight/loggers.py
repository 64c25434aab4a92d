"""TensorBoard on one step axis: optimizer steps.

aelight's training engine takes several optimizer steps per Lightning batch, so Lightning's own
step for scalars (batches) is not the step of the images, of ``trainer.global_step`` or of the
checkpoints. ``TensorBoardLogger`` writes every scalar at the optimizer step instead: during
``fit`` the trainer's ``global_step``; during ``validate`` / ``test`` / ``predict`` the step of the
checkpoint evaluated, so a test result stands at the end of the curve it belongs to and never
replaces a value that ``fit`` wrote (evaluation leaves out Lightning's ``epoch`` scalar, which
``fit`` already wrote at that step). ``OptimizerStepAxis``, a callback every aelight run has,
tells the logger which step that is.
"""

from typing import Callable, Optional

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger with its scalars on the optimizer-step axis (see the module's
    docstring); without ``OptimizerStepAxis`` it behaves as Lightning's."""

    def __init__(self, *args, default_hp_metric: bool = False, **kwargs):
        # No placeholder hp_metric = -1: the HParams dashboard gets the run's real metrics.
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)
        self.step_of: Optional[Callable[[], int]] = None
        self.evaluating = False

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        if self.step_of is not None:
            step = self.step_of()
        if self.evaluating:
            metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        super().log_metrics(metrics, step)


class OptimizerStepAxis(L.Callback):
    """Puts the run's TensorBoard scalars on the optimizer-step axis: the trainer's ``global_step``
    while fitting, the evaluated checkpoint's step while evaluating."""

    def __init__(self):
        self.checkpoint_step: Optional[int] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.checkpoint_step = None
        evaluating = stage != "fit"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.evaluating = evaluating
                logger.step_of = self._evaluated_step(trainer) if evaluating else lambda: trainer.global_step

    def _evaluated_step(self, trainer: L.Trainer) -> Callable[[], int]:
        # A checkpoint loaded for evaluation gives its step; evaluating the model just trained
        # (trainer.test(model) after fit) gives the trainer's.
        return lambda: self.checkpoint_step if self.checkpoint_step is not None else trainer.global_step

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.checkpoint_step = int(checkpoint.get("global_step", 0))
