"""Stop training at the first NaN or infinite loss, before any checkpoint can hold bad weights."""

import lightning as L
import torch

from aelight.errors import NonFiniteLossError


class FiniteLossGuard(L.Callback):
    """Watches the loss terms of every training step.

    The check is kept on the device (no host sync per step); the host reads it every
    ``check_every_n_steps`` steps and always before a checkpoint is written, so a checkpoint
    never receives weights from after a non-finite loss. The error names the first bad step
    and the terms that were not finite there.
    """

    def __init__(self, check_every_n_steps: int = 1):
        self.check_every_n_steps = max(1, check_every_n_steps)
        self._first_bad_step = None  # device tensor, -1 while every loss has been finite
        self._bad_terms = None
        self._names: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = getattr(pl_module, "last_loss_values", None)
        names = getattr(pl_module, "loss_term_names", None)
        if values is None:  # a model outside aelight: watch the loss it returns
            values, names = outputs["loss"].detach().reshape(1), ["loss"]
        finite = torch.isfinite(values)
        step = trainer.global_step
        if self._first_bad_step is None or names != self._names:
            self._names = list(names)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=finite.device)
            self._bad_terms = torch.zeros_like(finite)
        newly_bad = (~finite).any() & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(newly_bad, step, self._first_bad_step)
        self._bad_terms = torch.where(newly_bad, ~finite, self._bad_terms)
        if step % self.check_every_n_steps == 0:
            self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()  # raising here aborts the save: the last good checkpoint stays as it was

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def check(self) -> None:
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step >= 0:
            bad = [name for name, b in zip(self._names, self._bad_terms.tolist()) if b]
            raise NonFiniteLossError(
                f"training stopped: non-finite loss at step {step} (terms not finite: {', '.join(bad)}). "
                "No checkpoint was written after it. Lower the learning rate or check the data and model."
            )
