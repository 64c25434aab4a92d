"""Stop training at the first NaN or infinite loss, before any checkpoint can hold bad weights."""

import lightning as L
import torch

from aelight.errors import NonFiniteLossError


class FiniteLossGuard(L.Callback):
    """Watches the loss terms of every training step (every optimizer step of a batch).

    The check is kept on the device (no host sync per step); the host reads it every
    ``check_every_n_steps`` steps and always before a checkpoint is written, so a checkpoint
    never receives weights from after a non-finite loss. The error names the first bad step
    and the terms that were not finite there.
    """

    def __init__(self, check_every_n_steps: int = 1):
        self.check_every_n_steps = max(1, check_every_n_steps)
        self._first_bad_step = None  # device tensor, -1 while every loss has been finite
        self._bad_terms = None
        self._checked_at = 0  # global step of the last host read
        self._names: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # aelight's models and engine return every step's terms, (steps of this batch, terms)
        if isinstance(outputs, dict) and "step_terms" in outputs:
            values, names = outputs["step_terms"], outputs["term_names"]
        elif isinstance(outputs, dict) and "loss" in outputs:  # a model outside aelight: watch its loss
            values, names = outputs["loss"].detach().reshape(1, 1), ["loss"]
        else:
            return
        values = values.reshape(-1, len(names))
        finite = torch.isfinite(values)
        step = trainer.global_step  # optimizer steps done, the last of them this batch's last row
        if self._first_bad_step is None or names != self._names:
            self._names = list(names)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=finite.device)
            self._bad_terms = torch.zeros_like(finite[0])
        bad_rows = ~finite.all(1)
        first_bad_row = bad_rows.int().argmax()  # 0 where none is bad; then newly_bad is False
        newly_bad = bad_rows.any() & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(newly_bad, first_bad_row + (step - len(values) + 1), self._first_bad_step)
        self._bad_terms = torch.where(newly_bad, ~finite[first_bad_row], self._bad_terms)
        if step - self._checked_at >= self.check_every_n_steps:  # a batch may take several steps
            self._checked_at = step
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
