"""Process-level settings that the ``aelight`` command makes when it starts (from Python, call them
before training): faster steps without changing results, stopping with a sweep, a quiet console."""

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

PARENT_ENV = "AELIGHT_SWEEP_PARENT"  # pid of the aelight sweep process that started this one
PRUNED_EXIT = 3  # the exit code of a run of aelight sweep that its pruning callback stopped


def is_higher_rank() -> bool:
    """Whether this is a process of a DDP run other than rank 0 (Lightning starts those with
    RANK / LOCAL_RANK set): such processes leave the run's files to rank 0."""
    ranks = (os.environ.get(name, "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    return any(rank.isdigit() and int(rank) > 0 for rank in ranks)


def skip_repeated_gpu_probe() -> None:
    """On a machine without GPUs, stop torch from probing for them at every optimizer step.

    Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` at import (so that checking for CUDA does
    not poison forked processes). With a CUDA build of torch and no GPU, that check loads the
    NVML library again on every call, and Adam's step calls it every step: about 0.1 ms, a
    quarter of a step of the reference model on a 2-core CPU. Where NVML finds no GPU there is
    nothing to poison, so the plain runtime check (cached by torch) is used instead.
    """
    import torch  # here, not at the top: aelight sweep's processes import neither torch nor Lightning

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


def adopt_orphans() -> None:
    """Linux: descendants whose parent dies before them (a sweep worker's forkserver) become this
    process's children rather than the system's init, so ``reap_orphans`` can wait for them: a
    container's init may never reap them, and they would linger as zombies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(timeout: float) -> None:
    """Waits (at most ``timeout`` seconds) for every child process left, adopted ones included;
    call it once the children this process started itself have been waited for."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


# Notices of the libraries underneath that say nothing about the user's run, printed by every
# command and into every sweep trial's output.log: Lightning 2.6 advertising its cloud logger, and
# torch's deprecation of a pytree check inside Lightning's own code.
LIBRARY_NOTICES = ("💡 Tip: For seamless cloud logging", "`isinstance(treespec, LeafSpec)` is deprecated")


class _DropLibraryNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIBRARY_NOTICES)


def quiet_library_notices() -> None:
    """Leaves out ``LIBRARY_NOTICES`` (every other warning and message still shows)."""
    warnings.filterwarnings("ignore", message=re.escape(LIBRARY_NOTICES[1]))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLibraryNotices) for f in logger.filters):
            logger.addFilter(_DropLibraryNotices())


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C during the body takes effect when it ends (in the main thread; elsewhere nothing
    changes). For work that an interruption inside would leave broken rather than stopped: a
    checkpoint write (torch.save's zip writer), or a library's import (numpy, scipy and torch
    half-imported fail with their own errors, a RecursionError among them, hiding the Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # Python's handler raises KeyboardInterrupt here
