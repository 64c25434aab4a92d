"""Process-level settings that make training faster without changing results; the ``aelight``
command makes them when it starts (from Python, call them before training)."""

import os

import torch


def skip_repeated_gpu_probe() -> None:
    """On a machine without GPUs, stop torch from probing for them at every optimizer step.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` at import (so that checking for CUDA does
    not poison forked processes). With a CUDA build of torch and no GPU, that check loads the
    NVML library again on every call, and Adam's step calls it every step: about 0.1 ms, a
    quarter of a step of the reference model on a 2-core CPU. Where NVML finds no GPU there is
    nothing to poison, so the plain runtime check (cached by torch) is used instead.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
