"""The few private Lightning (and torch) interfaces aelight needs, in one place.

Each has no public equivalent in Lightning 2.6; ``tests/test_lightning_compat.py`` fails when a
Lightning release changes one of them, and pyproject.toml admits only the tested Lightning range.
"""

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.overrides.distributed import prepare_for_backward


def count_optimizer_step(optimizer: LightningOptimizer) -> None:
    """Counts one optimizer step taken without ``LightningOptimizer.step`` (``trainer.global_step``,
    the loops' progress): what that method does around the step."""
    optimizer._on_before_step()
    optimizer._on_after_step()


def logger_will_write(trainer) -> bool:
    """Whether the logger writes the values logged at this step (``log_every_n_steps``); True
    outside a trainer."""
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or connector.should_update_logs


# LightningCLI calls this method of itself right after parsing, before instantiating anything (it
# reads the checkpoint's hyperparameters there); CheckpointCheckingCLI overrides it.
CLI_CHECKPOINT_HOOK = "_parse_ckpt_path"


class CheckpointCheckingCLI(LightningCLI):
    """LightningCLI whose step between parsing and instantiating is ``read_checkpoint``: aelight
    checks a checkpoint (weights-only, its class paths allowed) before anything it names is imported,
    instead of Lightning's reading of its hyperparameters."""

    def read_checkpoint(self) -> None:
        raise NotImplementedError


setattr(CheckpointCheckingCLI, CLI_CHECKPOINT_HOOK, lambda self: self.read_checkpoint())


def summary_file_writer(writer):
    """The event-file writer of a ``torch.utils.tensorboard.SummaryWriter``, for summaries that
    SummaryWriter has no method for (TensorBoard's HParams records); Lightning uses it the same way."""
    return writer._get_file_writer()


def ddp_backward(model):
    """``loss.backward()`` for a loss computed outside ``DistributedDataParallel.forward`` (the
    engine's steps run inside one Lightning ``training_step``), with DDP's gradient all-reduce:
    Lightning's DDP strategy readies the reducer this way before each manual backward."""

    def backward(loss):
        prepare_for_backward(model, loss)
        loss.backward()

    return backward


# DDP's reducer times its first iterations (and then every 100th) with CUDA events, recorded in
# the forward and in the backward's hooks; an event recorded while a CUDA graph is captured breaks
# the next iteration's timing read, so capture waits for DDP_TIMED_ITERATIONS iterations, and the
# periodic timing is switched off before (PyTorch's notes: 11 eager DDP iterations before capture).
DDP_TIMED_ITERATIONS = 10


def ddp_stop_periodic_timing(model) -> None:
    """Makes DDP time only its first ``DDP_TIMED_ITERATIONS`` iterations (not every 100th)."""
    model._set_ddp_runtime_logging_sample_rate(2**31 - 1)


def jit_tracing():
    """A context in which a LightningModule outside a trainer can be traced by ``torch.jit`` (its
    ``trainer`` property then gives None rather than raising): what ``LightningModule.to_torchscript``
    uses, for a graph that wraps the module (``aelight export --format torchscript``)."""
    from lightning.pytorch.core.module import _jit_is_scripting

    return _jit_is_scripting()
