"""The training engine: how optimizer steps are run, apart from what is trained.

A model says what one training step computes (``AE.training_terms``: the loss terms on a batch);
``TrainingEngine``, a Lightning callback, decides how steps are taken:

- ``steps_per_batch: N``: each Lightning batch carries N batches of ``batch_size`` (the data
  module serves them; the CLI links ``data.steps_per_batch`` to this value) and the engine takes N
  optimizer steps on it, so Lightning's per-batch overhead (about 1 ms on a CPU, more than a step
  of a small model) is paid once per N steps. The batch size per step, the steps per epoch,
  ``trainer.global_step``, ``max_steps`` and ``log_every_n_steps`` (rounded to whole batches)
  keep their meaning of optimizer steps; an LR scheduler steps once an epoch.
- direct steps: Lightning's path for a manual step (``manual_backward``, ``LightningOptimizer.step``)
  is ``loss.backward()`` and ``optimizer.step()`` plus hook calls of every callback, profiler
  marks and step counting. Where those hooks do nothing (one device or plain DDP, no loss scaling,
  no profiler, no callback or module hook listening) the engine calls the two directly and counts
  the step; under DDP it readies DDP's gradient all-reduce before each backward, as Lightning does.
- ``cuda_graph: true``: all steps of a Lightning batch replayed as one captured CUDA graph
  (``aelight.training.cuda_graph``), on a CUDA device with direct steps; otherwise a warning. Under DDP
  the graph holds the gradient all-reduce too (NCCL collectives can be captured), captured after
  DDP's first timed iterations.
- ``compile_step: true``: each step's forward and loss through ``torch.compile``.
- ``channels_last``: a model with 2-D convolutions keeps its convolution weights, and the engine
  its training batches, in the channels-last layout, in which oneDNN's convolutions run faster on a
  CPU (``scripts/bench_channels_last.py``). Unset, it is on for such a model trained on the CPU; the
  weights keep their names and values, so checkpoints load into either layout, and the decoder's
  images are handed on in the usual layout.
- no host sync per step: the loss terms of a batch's steps are stacked and summed on the device;
  ``self.log`` runs only when the logger writes.

With ``steps_per_batch: 1`` and neither graph nor compilation, the engine leaves the model to
Lightning's automatic optimization. Gradient clipping (``trainer.gradient_clip_val``) applies to
every step either way; ``accumulate_grad_batches`` needs that automatic path.
"""

from dataclasses import dataclass, field
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from aelight.errors import ConfigError
from aelight.models.autoencoder import stack_terms
from aelight.training.cuda_graph import GraphedStep
from aelight.training.lightning_compat import (
    DDP_TIMED_ITERATIONS,
    count_optimizer_step,
    ddp_backward,
    ddp_stop_periodic_timing,
    logger_will_write,
)

STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def has_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules())


def in_usual_layout(module: torch.nn.Module, inputs, output):
    """Forward hook on a channels-last model's decoder: its images go on to the loss, the metrics and
    the applications in the usual (contiguous) layout, whatever decoder made them (torchmetrics,
    for one, views them flat)."""
    return output.contiguous() if isinstance(output, Tensor) else output


@dataclass
class EpochTerms:
    """The training loss terms of the epoch so far, kept on the device (a plain object: setting
    ``nn.Module`` attributes costs microseconds, several times in every step)."""

    names: list[str] = field(default_factory=list)
    sums: Optional[Tensor] = None  # sums over the epoch, each weighted by its batch size
    count: int = 0


class TrainingEngine(L.Callback):
    """Runs the optimizer steps of an aelight model; see the module's docstring."""

    def __init__(
        self,
        steps_per_batch: int = 1,
        cuda_graph: bool = False,
        compile_step: bool = False,
        channels_last: Optional[bool] = None,
    ):
        if steps_per_batch < 1:
            raise ConfigError(f"engine.steps_per_batch must be at least 1, got {steps_per_batch}")
        self.steps_per_batch, self.cuda_graph, self.compile_step = steps_per_batch, cuda_graph, compile_step
        self.channels_last = channels_last
        self.layout: Optional[torch.memory_format] = None  # of the training batches; decided in setup
        self._usual_layout: Optional[torch.utils.hooks.RemovableHandle] = None  # on the decoder's output
        self.direct_steps = False  # decided when training starts
        self.graphed_step: Optional[GraphedStep] = None
        self._backward = Tensor.backward  # of a direct step; DDP's readies its all-reduce first
        self._batches = 0  # training batches of this fit in this process (DDP's iterations)
        self._log_every_n_steps: Optional[int] = None  # trainer.log_every_n_steps as the user set it
        self._terms_fn = None
        self._epoch = EpochTerms()

    @property
    def drives_steps(self) -> bool:
        """Whether the engine takes the steps itself (else Lightning's automatic optimization)."""
        return self.steps_per_batch > 1 or self.cuda_graph or self.compile_step

    # --- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self.drives_steps:
            return
        if trainer.accumulate_grad_batches != 1:
            option = (
                "steps_per_batch" if self.steps_per_batch > 1 else "cuda_graph" if self.cuda_graph else "compile_step"
            )
            wanted = 1 if option == "steps_per_batch" else "false"
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} needs engine.{option}: {wanted}; "
                f"set --engine.{option} {wanted}, or raise data.batch_size instead of accumulating"
            )
        # After Lightning checked the configuration: with the engine stepping, its clipping of
        # trainer.gradient_clip_val (below) replaces Lightning's automatic one.
        pl_module.automatic_optimization = False
        pl_module.training_engine = self
        # trainer.log_every_n_steps counts optimizer steps, as TensorBoard's axis does; Lightning
        # counts batches when deciding to write, and each batch here is steps_per_batch steps.
        if self._log_every_n_steps is None:
            self._log_every_n_steps = trainer.log_every_n_steps
        trainer.log_every_n_steps = max(1, round(self._log_every_n_steps / self.steps_per_batch))
        self._terms_fn = torch.compile(pl_module.training_terms) if self.compile_step else pl_module.training_terms
        self.layout = None
        if self._usual_layout is not None:
            self._usual_layout.remove()
            self._usual_layout = None
        wanted = trainer.strategy.root_device.type == "cpu" if self.channels_last is None else self.channels_last
        if wanted and has_convolutions(pl_module):
            self.layout = torch.channels_last
            pl_module.to(memory_format=torch.channels_last)  # 4-D weights only; before the optimizer exists
            decoder = getattr(pl_module, "decoder", None)
            if isinstance(decoder, torch.nn.Module):
                self._usual_layout = decoder.register_forward_hook(in_usual_layout)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.drives_steps:
            return
        plugin = trainer.precision_plugin
        unscaled = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
        listened = any(is_overridden(h, cb, L.Callback) for cb in trainer.callbacks for h in STEP_HOOKS) or any(
            is_overridden(h, pl_module, L.LightningModule) for h in (*STEP_HOOKS, "backward")
        )
        strategy = trainer.strategy
        # Plain DDP: Lightning's DDP strategy (any start method), without static_graph, whose first
        # iteration Lightning flushes by hand.
        ddp = strategy.model if type(strategy) is DDPStrategy else None
        plain_ddp = isinstance(ddp, DistributedDataParallel) and not ddp.static_graph
        self.direct_steps = (
            (type(strategy) is SingleDeviceStrategy or plain_ddp)
            and unscaled
            and type(trainer.profiler) is PassThroughProfiler
            and not listened
        )
        self._backward = ddp_backward(ddp) if plain_ddp else Tensor.backward
        self._batches = 0
        self.graphed_step = None
        if self.cuda_graph:
            if pl_module.device.type != "cuda" or not self.direct_steps or trainer.gradient_clip_val:
                rank_zero_warn(
                    "engine.cuda_graph: true needs CUDA devices (one, or plain DDP), no loss scaling (bf16-mixed or "
                    "32-true), no profiler, no gradient clipping and no callback or module hook on backward or the "
                    "optimizer step; here the training steps run without it"
                )
            else:
                raw = pl_module.optimizers().optimizer
                eager_batches = 0
                if plain_ddp:
                    ddp_stop_periodic_timing(ddp)
                    eager_batches = DDP_TIMED_ITERATIONS
                self.graphed_step = GraphedStep(
                    lambda x: self._take_steps(pl_module, raw, x, self._backward),
                    raw,
                    on_failure=rank_zero_warn,
                    ready=lambda: self._batches > eager_batches,
                )
        how = "replayed as CUDA graphs" if self.graphed_step else "direct" if self.direct_steps else "through Lightning"
        layout = ", channels-last convolutions" if self.layout is not None else ""
        rank_zero_info(f"aelight engine: {self.steps_per_batch} optimizer steps per batch, {how}{layout}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.drives_steps:
            return
        t = self._epoch
        if t.count:
            pl_module.log_dict({f"train/{k}_epoch": v for k, v in zip(t.names, t.sums / t.count)}, sync_dist=True)
        self._epoch = EpochTerms(names=t.names)
        scheduler = pl_module.lr_schedulers()
        if scheduler is not None:  # manual optimization steps its scheduler itself, once per epoch
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if "val/loss" in trainer.callback_metrics:
                    scheduler.step(trainer.callback_metrics["val/loss"])
            else:
                scheduler.step()

    # --- the steps ---------------------------------------------------------------------------
    def training_step(self, pl_module, batch) -> dict:
        """The optimizer steps on one Lightning batch; returns ``term_names`` and ``step_terms``
        (one row per step) for the callbacks (FiniteLossGuard)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.layout is not None and x.dim() == 4:
            x = x.contiguous(memory_format=self.layout)
        optimizer = pl_module.optimizers()
        self._batches += 1
        if self.graphed_step is not None:
            names, values = self.graphed_step(x)
        elif self.direct_steps:
            names, values = self._take_steps(pl_module, optimizer.optimizer, x, self._backward)
        else:
            names, values = self._take_steps(pl_module, optimizer, x, pl_module.manual_backward)
        if self.direct_steps:  # the step counting (trainer.global_step) that LightningOptimizer.step does
            for _ in range(len(values)):
                count_optimizer_step(optimizer)
        self._log_terms(pl_module, names, values, [len(c) for c in self._split(x)])
        return {"term_names": names, "step_terms": values}

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        # Always the same number of chunks (a short last batch gives smaller ones), so every DDP
        # rank takes the same number of steps.
        return x.tensor_split(min(self.steps_per_batch, len(x)))

    def _take_steps(self, pl_module, optimizer, x: Tensor, backward) -> tuple[list[str], Tensor]:
        """One optimizer step per chunk of ``batch_size`` samples; the loss term names and their
        values, one row per step."""
        trainer = pl_module.trainer
        clip = trainer.gradient_clip_val
        rows = []
        for chunk in self._split(x):
            optimizer.zero_grad(set_to_none=True)
            terms = self._terms_fn(chunk)
            backward(terms["loss"])
            if clip:
                algorithm = trainer.gradient_clip_algorithm
                pl_module.clip_gradients(optimizer, clip, algorithm.value if algorithm else None)
            optimizer.step()
            rows.append(stack_terms(terms))
        return list(terms), torch.stack(rows)

    def _log_terms(self, pl_module, names: list[str], values: Tensor, batch_sizes: list[int]) -> None:
        """Logs ``train/<term>`` on the steps the logger writes and keeps the epoch's sums.

        ``self.log`` costs about 0.5 ms a call in Lightning 2.6, more than a whole step of a small
        model, so the sums stay on the device and nothing here calls ``.item()``.
        """
        t = self._epoch
        t.names = names
        if t.sums is None or len(t.sums) != values.shape[1]:
            t.sums = torch.zeros_like(values[0], dtype=torch.float32)
        if len(set(batch_sizes)) == 1:  # the usual case: equal steps, one weighted sum
            t.sums.add_(values.sum(0), alpha=batch_sizes[0])
        else:
            for row, size in zip(values, batch_sizes):
                t.sums.add_(row, alpha=size)
        t.count += sum(batch_sizes)
        if logger_will_write(pl_module.trainer):
            pl_module.log_dict({f"train/{k}": v for k, v in zip(names, values[-1])}, on_step=True, on_epoch=False)
