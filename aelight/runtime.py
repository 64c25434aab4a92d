"""Process-level settings that make training faster without changing results; the ``aelight``
command makes them when it starts (from Python, call them before training)."""

import os
import signal
import sys

import torch

PARENT_ENV = "AELIGHT_SWEEP_PARENT"  # pid of the aelight sweep process that started this one


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


def stop_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGTERM when ``parent_pid``, the sweep process that started it, dies,
    even killed outright (SIGKILL, the out-of-memory killer), so no worker or run of a dead sweep
    goes on unseen; the sweep's SIGTERM handling then records its trial as interrupted."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    # the process's own symbols hold libc's prctl (find_library would start ldconfig in every run)
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
