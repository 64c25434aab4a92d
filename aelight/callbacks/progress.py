"""A progress bar that counts optimizer steps."""

from lightning.pytorch.callbacks import TQDMProgressBar


class OptimizerStepProgressBar(TQDMProgressBar):
    """Lightning's progress bar with optimizer steps as its training unit: with the training engine's
    ``steps_per_batch: 8`` an epoch of the reference recipe shows 430 steps, not 54 batches."""

    def __init__(self, steps_per_batch: int = 1, refresh_rate: int = 1, leave: bool = False):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.steps_per_batch = steps_per_batch
        self._epoch_start_step = 0

    @property
    def total_train_batches(self):
        """Optimizer steps of this epoch: every Lightning batch carries ``steps_per_batch`` of them
        (the engine splits even a short last batch into that many), at most those left to ``max_steps``."""
        trainer = self.trainer
        steps = trainer.num_training_batches * self.steps_per_batch
        if trainer.max_steps is not None and trainer.max_steps > 0:
            steps = min(steps, trainer.max_steps - trainer.global_step)
        return steps

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_start_step = trainer.global_step
        self.train_progress_bar.unit = "step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = trainer.global_step - self._epoch_start_step
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        if n >= (bar.total or n + 1) or (batch_idx + 1) % self.refresh_rate == 0:
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
