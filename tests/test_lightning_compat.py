"""The private Lightning interfaces aelight relies on (aelight/training/lightning_compat.py) are still there
and still mean what aelight takes them to mean: these fail when a Lightning release changes them."""

import inspect

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from torch.nn.parallel import DistributedDataParallel

from aelight.training.lightning_compat import (
    CLI_CHECKPOINT_HOOK,
    DDP_TIMED_ITERATIONS,
    count_optimizer_step,
    ddp_backward,
    ddp_stop_periodic_timing,
    jit_tracing,
    logger_will_write,
    summary_file_writer,
)


def test_lightning_cli_reads_the_checkpoint_through_the_hook_aelight_overrides():
    assert callable(getattr(LightningCLI, CLI_CHECKPOINT_HOOK))
    init = inspect.getsource(LightningCLI.__init__)
    # called after parsing and before the classes are instantiated
    assert init.index(f"self.{CLI_CHECKPOINT_HOOK}()") < init.index("self.instantiate_classes()")
    assert init.index("self.parse_arguments(") < init.index(f"self.{CLI_CHECKPOINT_HOOK}()")


def test_counting_a_step_by_hand_moves_the_global_step_like_lightning_optimizer_step(tmp_path):
    class Manual(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.optimizer.zero_grad()
            self.layer(batch[0]).sum().backward()
            optimizer.optimizer.step()  # the raw step: Lightning does not see it
            count_optimizer_step(optimizer)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(6, 2)), batch_size=2)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Manual(), data)
    assert trainer.global_step == 3  # without the count, a raw step leaves it at 0


def test_the_logger_connector_says_when_the_logger_writes(tmp_path):
    assert isinstance(inspect.getattr_static(_LoggerConnector, "should_update_logs"), property)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(logger_will_write(trainer))

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), batch_size=1)
    trainer = L.Trainer(max_epochs=1, log_every_n_steps=3, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Probe()])  # fmt: skip
    trainer.fit(Model(), data)
    assert seen.count(True) in (2, 3) and seen.count(False) >= 5  # every 3rd of 8 steps
    assert logger_will_write(object())  # outside a trainer: always


def test_a_summary_writers_event_file_writer_takes_protocol_buffer_summaries(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        summary_file_writer(writer).add_summary(Summary(value=[Summary.Value(tag="x", simple_value=2.5)]), 7)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(7, 2.5)]


@pytest.fixture
def one_process_group():
    """A gloo process group of this process alone (world size 1), for DDP in the test process."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_backward_outside_ddps_forward_runs_its_gradient_all_reduce(one_process_group):
    layer = torch.nn.Linear(3, 2)
    ddp = DistributedDataParallel(layer)
    reductions = []

    def count(state, bucket):  # DDP's communication hook: called for each bucket it all-reduces
        reductions.append(1)
        done = torch.futures.Future()
        done.set_result(bucket.buffer())
        return done

    ddp.register_comm_hook(None, count)
    for _ in range(2):  # the module's own forward, as the engine's steps call it
        layer(torch.ones(4, 3)).sum().backward()
    assert reductions == []  # a plain backward outside DDP's forward: no gradient is all-reduced
    backward = ddp_backward(ddp)
    for _ in range(3):
        backward(layer(torch.ones(4, 3)).sum())
    assert len(reductions) == 3


def test_ddp_times_its_first_iterations_and_then_no_more_once_told(one_process_group):
    def timed_iterations(stop: bool) -> set:
        ddp = DistributedDataParallel(torch.nn.Linear(3, 2))
        if stop:
            ddp_stop_periodic_timing(ddp)
        seen = set()
        for _ in range(202):
            ddp(torch.ones(4, 3)).sum().backward()
            seen.add(ddp._get_ddp_logging_data()["iteration"])  # the last iteration DDP timed
        return seen

    first = set(range(DDP_TIMED_ITERATIONS + 1))
    assert timed_iterations(stop=False) == first | {100, 200}
    assert timed_iterations(stop=True) == first


def test_a_lightning_module_outside_a_trainer_traces_only_inside_jit_tracing():
    class Doubler(L.LightningModule):
        def forward(self, x):
            return 2 * x

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = Doubler()

        def forward(self, x):
            return self.module(x) + 1

    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        torch.jit.trace(Wrapper(), torch.ones(2))
    with jit_tracing():
        traced = torch.jit.trace(Wrapper(), torch.ones(2))
    assert torch.equal(traced(torch.tensor([1.0, 3.0])), torch.tensor([3.0, 7.0]))
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        Doubler().trainer  # the context put the property back
