"""The plain autoencoder, which is also the base class of every variant.

It owns what all variants share: the step of every stage, logging of each loss term,
reconstruction metrics, the optimizer and scheduler, and the ``encode`` / ``decode`` /
``reconstruct`` helpers. A variant overrides only what differs:

- ``corrupt(x)``: the training input (identity here; noise for the denoising AE),
- ``forward(x)``: the named outputs (``z``, ``logits``, ``recon`` and anything else),
- ``loss_terms(x, out)``: a dict of loss terms whose ``"loss"`` entry is optimised,
- ``preview(x)``: the rows of the image grid shown in TensorBoard.
"""

import warnings
from dataclasses import dataclass, field
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from aelight import trust
from aelight.components import MLPDecoder, MLPEncoder
from aelight.cuda_graph import GraphedStep
from aelight.errors import ConfigError
from aelight.runtime import skip_repeated_gpu_probe

EVAL_STAGES = ("val", "test")


def reconstruction_metrics(prefix: str) -> nn.ModuleDict:
    """MSE, per-image PSNR (dB, averaged over images) and SSIM, for images in [0, 1], of each stage.

    ``val_in_fit`` leaves SSIM out: torchmetrics' 11x11 Gaussian filter takes about 0.1 s per
    1,000 MNIST images on a 2-core CPU, so SSIM of the 5,000 validation images every epoch would
    cost twice a training epoch of the seed's model there.
    """

    def collection(stage: str, ssim: bool = True) -> MetricCollection:
        metrics = {"mse": MeanSquaredError(), "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))}
        if ssim:
            metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
        return MetricCollection(metrics, prefix=f"{stage}/{prefix}")

    return nn.ModuleDict({**{s: collection(s) for s in EVAL_STAGES}, "val_in_fit": collection("val", ssim=False)})


def _is_plain(value) -> bool:
    """True for config-like values (numbers, strings, None and lists or dicts of them)."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def stack_terms(terms: dict[str, Tensor]) -> Tensor:
    """The loss terms of one step as one float tensor, detached."""
    return torch.stack([v.detach() for v in terms.values()]).float()


@dataclass
class TrainTerms:
    """The training loss terms of the epoch so far, kept on the device.

    A plain object rather than module attributes: ``nn.Module.__setattr__`` costs microseconds and
    would run several times in every step.
    """

    names: list[str] = field(default_factory=list)
    last: Optional[Tensor] = None  # the terms of the last batch's steps, (steps, terms): read by FiniteLossGuard
    sums: Optional[Tensor] = None  # sums over the epoch, each weighted by its batch size
    count: int = 0


class AE(L.LightningModule):
    """Autoencoder ``x' = g(f(x))`` trained with the mean squared error.

    The defaults are the seed's model: a 784 -> 32 Linear+ReLU encoder, a 32 -> 784
    Linear+Sigmoid decoder and Adam with lr 1e-3, on pixels in [0, 1].
    """

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        init_output_bias: bool = True,
        steps_per_batch: int = 1,
        compile_step: bool = False,
        init_weights: Optional[str] = None,
        ssim_in_fit: bool = False,
        cuda_graph: bool = False,
        compile_networks: bool = False,
    ):
        super().__init__()
        # From the CLI, hparams hold the config of networks and optimizer (class paths and arguments).
        # Objects passed from Python (modules, classes) would be pickled into the checkpoint, which
        # then could not be loaded with weights_only=True: drop them (weights are in the state dict).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.remove_ignored_hparams([k for k, v in self.hparams.items() if not _is_plain(v)])
        self.encoder = encoder if encoder is not None else MLPEncoder()
        self.decoder = decoder if decoder is not None else MLPDecoder(in_features=self.code_features)
        self._check_code_size()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.init_output_bias = init_output_bias
        if steps_per_batch < 1:
            raise ConfigError(f"steps_per_batch must be at least 1, got {steps_per_batch}")
        self.steps_per_batch = steps_per_batch
        # Several optimizer steps per Lightning batch amortise Lightning's per-batch overhead
        # (about 1 ms on a CPU, more than the step of a small model): the data module then
        # serves steps_per_batch x batch_size samples and training_step steps through them.
        self.automatic_optimization = steps_per_batch == 1 and not cuda_graph
        # The optimizer steps of each Lightning batch replayed as one captured CUDA graph (aelight/cuda_graph.py).
        self.cuda_graph = cuda_graph
        self._graphed_step: Optional[GraphedStep] = None
        # torch.compile of the training step's forward and loss: one generated kernel for the chain
        # of elementwise ops and a matching backward, instead of a dispatch per op.
        # compile_networks: the option's earlier name, kept so that checkpoints written with it load.
        self.compile_step = compile_step or compile_networks
        self._compiled_training_terms = None
        # Staged training (e.g. fine-tuning on another objective): start from a checkpoint's weights
        # with a fresh optimizer, scheduler and epoch count. ``--ckpt_path`` cannot do this, as a
        # resume takes the model's config from the checkpoint.
        self.init_weights = init_weights
        # SSIM in fit's validation pass every epoch (``validate`` and ``test`` always report it).
        self.ssim_in_fit = ssim_in_fit
        self.metrics = reconstruction_metrics("")
        self.train_terms = TrainTerms()
        self.direct_steps = False  # set at the start of training, see on_train_start
        self.gradient_clipping: Optional[tuple[float, Optional[str]]] = None  # (value, algorithm), see cli.py

    # --- what the variants override -------------------------------------------------------
    @property
    def code_features(self) -> int:
        """Size of the code the decoder takes."""
        return self.encoder.out_features

    def corrupt(self, x: Tensor) -> Tensor:
        """The input the model sees during training (the target stays ``x``)."""
        return x

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.encoder(x)
        logits = self.decoder(z)
        return {"z": z, "logits": logits, "recon": torch.sigmoid(logits)}

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        recon = F.mse_loss(out["recon"].float(), x.float())
        return {"loss": recon, "recon": recon}

    def preview(self, x: Tensor) -> list[tuple[str, Tensor]]:
        """Rows of images for the TensorBoard grid, top to bottom."""
        return [("input", x), ("reconstruction", self.reconstruct(x))]

    # --- helpers for applications -------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Code to pixels in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-image score, higher = more anomalous: the reconstruction's mean squared error."""
        return (self.reconstruct(x).float() - x.float()).pow(2).flatten(1).mean(1)

    # --- Lightning ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        skip_repeated_gpu_probe()
        if self.compile_step and stage == "fit" and self._compiled_training_terms is None:
            self._compiled_training_terms = torch.compile(self.training_terms)
        # Start the decoder at the mean training image (output bias = its logit), so the first
        # steps learn digits rather than the background: one epoch of the seed's model then
        # reaches a test MSE of about 0.021 instead of 0.035. Runs before a checkpoint is
        # restored, so resuming is unaffected.
        datamodule = getattr(self.trainer, "datamodule", None)
        set_bias = getattr(self.decoder, "set_output_bias", None)
        if stage == "fit" and self.init_output_bias and set_bias and hasattr(datamodule, "mean_image"):
            set_bias(datamodule.mean_image("train"))

    def on_fit_start(self) -> None:
        # A new run starts from init_weights; a resumed one (trainer.ckpt_path set, its weights
        # already restored) never reads that file again, so it may have been moved or deleted.
        if self.init_weights and self.trainer.ckpt_path is None:
            self.load_init_weights(self.init_weights)

    def load_init_weights(self, path: str) -> None:
        """Copies the weights of the checkpoint at ``path`` (loaded weights-only, its class paths
        checked, see aelight.trust) into this model."""
        state = trust.load_checkpoint(path)["state_dict"]
        try:
            self.load_state_dict(state)
        except RuntimeError as err:  # missing or unexpected keys, or shapes that differ
            detail = " ".join(str(err).split("\n\t")[1:2])[:300]
            raise ConfigError(
                f"init_weights {path}: its weights do not fit this {type(self).__name__} ({detail}); "
                "give a checkpoint of the same encoder and decoder"
            ) from None

    def training_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Loss terms of one training step on the batch ``x``: the model sees ``corrupt(x)``."""
        return self.loss_terms(x, self(self.corrupt(x)))

    def _common_step(self, batch, batch_idx: int, stage: str) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if stage == "train":
            terms = self._train_terms(x)
            self.log_train_terms(list(terms), stack_terms(terms)[None], [x.shape[0]])
            return terms["loss"]
        out = self(x)
        terms = self.loss_terms(x, out)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=x.shape[0], sync_dist=True)
        self.update_metrics(self.stage_metrics(self.metrics, stage), out["recon"], x)
        return terms["loss"]

    def stage_metrics(self, metrics: nn.ModuleDict, stage: str) -> MetricCollection:
        """The metrics of ``stage`` from ``reconstruction_metrics``: without SSIM in fit's validation."""
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        return metrics["val_in_fit"] if stage == "val" and fitting and not self.ssim_in_fit else metrics[stage]

    def _train_terms(self, x: Tensor) -> dict[str, Tensor]:
        return (self._compiled_training_terms or self.training_terms)(x)

    def log_train_terms(self, names: list[str], values: Tensor, batch_sizes: list[int]) -> None:
        """Logs ``train/<term>`` on the steps the logger writes and ``train/<term>_epoch`` (the mean).

        ``values`` holds the terms of each optimizer step of this batch, shape (steps, terms).
        ``self.log`` costs about 0.5 ms a call in Lightning 2.6, more than a whole step of a small
        model, so running sums stay on the device and ``self.log`` runs only when its value is
        written. Nothing here calls ``.item()``: no host-device sync per step.
        """
        t = self.train_terms
        t.names, t.last = names, values
        if t.sums is None or len(t.sums) != values.shape[1]:
            t.sums = torch.zeros_like(values[0], dtype=torch.float32)
        if len(set(batch_sizes)) == 1:  # the usual case: equal steps, one weighted sum
            t.sums.add_(values.sum(0), alpha=batch_sizes[0])
        else:
            for row, size in zip(values, batch_sizes):
                t.sums.add_(row, alpha=size)
        t.count += sum(batch_sizes)
        connector = getattr(self._trainer, "_logger_connector", None)  # None outside a Trainer
        if connector is None or connector.should_update_logs:
            self.log_dict({f"train/{k}": v for k, v in zip(names, values[-1])}, on_step=True, on_epoch=False)

    def log_train_epoch_means(self) -> None:
        t = self.train_terms
        if t.count:
            self.log_dict({f"train/{k}_epoch": v for k, v in zip(t.names, t.sums / t.count)}, sync_dist=True)
        self.train_terms = TrainTerms(names=t.names, last=t.last)

    # FiniteLossGuard reads these two.
    @property
    def loss_term_names(self) -> list[str]:
        return self.train_terms.names

    @property
    def last_loss_values(self) -> Optional[Tensor]:
        return self.train_terms.last

    def update_metrics(self, metrics: MetricCollection, recon: Tensor, x: Tensor) -> None:
        shape = (-1, *x.shape[1:]) if x.dim() == 4 else (-1, 1, 28, 28)
        metrics.update(recon.float().reshape(shape), x.float().reshape(shape))
        self.log_dict(metrics, batch_size=x.shape[0])

    def on_train_start(self) -> None:
        # Lightning's path for a manual step, ``manual_backward`` and ``LightningOptimizer.step``, is
        # ``loss.backward()`` and ``optimizer.step()`` plus hook calls over every callback, profiler
        # marks and step counting: about 0.1 ms a step, a fifth of a step of the seed's model on a
        # CPU. Where those hooks do nothing (one device, no loss scaling, no profiler, no callback or
        # module hook listening) the inner steps call the two directly and count the step themselves.
        trainer = self.trainer
        plugin = trainer.precision_plugin
        unscaled = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        listened = any(is_overridden(h, cb, L.Callback) for cb in trainer.callbacks for h in hooks) or any(
            is_overridden(h, self, L.LightningModule) for h in (*hooks, "backward")
        )
        self.direct_steps = (
            type(trainer.strategy) is SingleDeviceStrategy
            and unscaled
            and type(trainer.profiler) is PassThroughProfiler
            and not listened
        )
        self._graphed_step = None
        if self.cuda_graph:
            if self.device.type != "cuda" or not self.direct_steps or self.gradient_clipping is not None:
                rank_zero_warn(
                    "cuda_graph: true needs one CUDA device, no loss scaling (bf16-mixed or 32-true), no profiler, "
                    "no gradient clipping and no callback or module hook on backward or the optimizer step; "
                    "here the training steps run without it"
                )
            else:
                raw = self.optimizers().optimizer
                self._graphed_step = GraphedStep(
                    lambda x: self._train_batch(raw, x, Tensor.backward), raw, on_failure=rank_zero_warn
                )

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        # Always the same number of chunks (a short last batch gives smaller ones), so every DDP
        # rank takes the same number of steps.
        return x.tensor_split(min(self.steps_per_batch, len(x)))

    def _train_batch(self, optimizer, x: Tensor, backward) -> tuple[list[str], Tensor]:
        """The optimizer steps on one Lightning batch ``x``, one per chunk of ``batch_size`` samples.

        Returns the loss term names and their values, one row per step.
        """
        rows = []
        for chunk in self._split(x):
            optimizer.zero_grad(set_to_none=True)
            terms = self._train_terms(chunk)
            backward(terms["loss"])
            if self.gradient_clipping is not None:
                self.clip_gradients(optimizer, *self.gradient_clipping)
            optimizer.step()
            rows.append(stack_terms(terms))
        return list(terms), torch.stack(rows)

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self._common_step(batch, batch_idx, "train")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        optimizer = self.optimizers()
        if self._graphed_step is not None:
            names, values = self._graphed_step(x)
        elif self.direct_steps:
            names, values = self._train_batch(optimizer.optimizer, x, Tensor.backward)
        else:
            names, values = self._train_batch(optimizer, x, self.manual_backward)
        if self.direct_steps:  # the step counting (trainer.global_step) that LightningOptimizer.step does
            for _ in range(len(values)):
                optimizer._on_before_step()
                optimizer._on_after_step()
        self.log_train_terms(names, values, [len(c) for c in self._split(x)])
        return None

    def on_train_epoch_end(self) -> None:
        self.log_train_epoch_means()
        scheduler = self.lr_schedulers() if not self.automatic_optimization else None
        if scheduler is not None:  # manual optimization steps its scheduler itself, once per epoch
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if "val/loss" in self.trainer.callback_metrics:
                    scheduler.step(self.trainer.callback_metrics["val/loss"])
            else:
                scheduler.step()

    def validation_step(self, batch, batch_idx):
        return self._common_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self._common_step(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx):
        x, y = batch
        return {"z": self.encode(x), "recon": self.reconstruct(x), "label": y}

    def configure_optimizers(self):
        try:  # torch checks the values (a negative lr, betas outside [0, 1)...) only here
            optimizer = self.optimizer_factory(self.parameters())
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model.init_args.optimizer: {err}") from None
        if self.scheduler_factory is None:
            return optimizer
        try:
            scheduler = self.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"model.init_args.lr_scheduler: {err}") from None
        # ``monitor`` is read only by schedulers that need it (ReduceLROnPlateau).
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    def _check_code_size(self) -> None:
        wanted = getattr(self.decoder, "in_features", self.code_features)
        if wanted != self.code_features:
            raise ConfigError(
                f"{type(self).__name__}: the decoder takes codes of size {wanted} but the encoder gives "
                f"{self.code_features}; set decoder.init_args.in_features to {self.code_features}"
            )
