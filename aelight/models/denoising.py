"""Denoising autoencoder: corrupt the training input, reconstruct the clean image."""

from typing import Optional

import torch
from torch import Tensor, nn

from aelight.components.corruption import NoiseKind, check_noise, corrupt
from aelight.models.autoencoder import AE, reconstruction_metrics


class DenoisingAE(AE):
    """``noise`` is ``gaussian`` (level = std), ``masking`` or ``salt_and_pepper`` (level = fraction).

    Validation and test report plain reconstruction (``val/psnr``...) and denoising of corrupted
    input (``val/denoise_psnr``...), with noise drawn from ``eval_noise_seed`` so that evaluations of
    different epochs and runs see the same corrupted images.
    """

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        noise: NoiseKind = "gaussian",
        noise_level: float = 0.3,
        eval_noise_seed: int = 1234,
        **kwargs,
    ):
        super().__init__(encoder=encoder, decoder=decoder, **kwargs)
        check_noise(noise, noise_level)
        self.noise, self.noise_level, self.eval_noise_seed = noise, noise_level, eval_noise_seed
        self.denoise_metrics = reconstruction_metrics("denoise_")

    def corrupt(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return corrupt(x, self.noise, self.noise_level, generator)

    def corrupt_for_eval(self, x: Tensor, batch_idx: int = 0) -> Tensor:
        seed = self.eval_noise_seed + 1_000_003 * self.global_rank + batch_idx
        return self.corrupt(x, torch.Generator(x.device).manual_seed(seed))

    def evaluate(self, x: Tensor, out: dict[str, Tensor], stage: str, batch_idx: int) -> None:
        denoised = self.reconstruct(self.corrupt_for_eval(x, batch_idx))
        self.update_metrics(self.stage_metrics(self.denoise_metrics, stage), denoised, x)

    def preview(self, x: Tensor) -> list[tuple[str, Tensor]]:
        noisy = self.corrupt_for_eval(x)
        return [("noisy", noisy), ("output", self.reconstruct(noisy)), ("clean", x)]
