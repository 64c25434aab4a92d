"""Random-number state in checkpoints, so a run resumed at an epoch boundary continues exactly as
an uninterrupted one would (noise of the denoising AE, the VAE's reparameterisation draws)."""

import lightning as L
import torch


class ResumableRNG(L.Callback):
    def __init__(self):
        self._restore = None

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = state_dict  # applied when training resumes, after the sanity check

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._restore is None:
            return
        torch.set_rng_state(self._restore["torch"])
        if "cuda" in self._restore and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._restore["cuda"])
        self._restore = None
