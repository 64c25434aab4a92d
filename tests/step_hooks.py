"""A callback for the tests that listens to every backward, so the training engine cannot take
its direct steps and goes through Lightning's step path (the reference the direct steps must match)."""

import lightning as L


class ListensToBackward(L.Callback):
    def __init__(self):
        self.calls = 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.calls += 1
