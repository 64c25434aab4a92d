"""Callbacks for the tests: one listens to every backward, so the training engine cannot take its
direct steps and goes through Lightning's step path (the reference the direct steps must match);
one pauses between epochs."""

import time

import lightning as L


class ListensToBackward(L.Callback):
    def __init__(self):
        self.calls = 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.calls += 1


class PausesAfterEachEpoch(L.Callback):
    """Sleeps after each training epoch (its checkpoints written), so a test can stop a run between
    two epochs for certain."""

    def __init__(self, seconds: float = 1.0):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)
