"""The plain autoencoder, which is also the base class of every variant.

It owns what all variants share: the step of every stage, logging of each loss term,
reconstruction metrics, the optimizer and scheduler, and the ``encode`` / ``decode`` /
``reconstruct`` helpers. How optimizer steps are taken (several per batch, direct, graphed,
compiled) is the training engine's business (``aelight.training.engine``), not the model's: it calls
``training_terms``. A variant overrides only what differs:

- ``corrupt(x)``: the training input (identity here; noise for the denoising AE),
- ``forward(x)``: the named outputs (``z``, ``logits``, ``recon`` and anything else),
- ``loss_terms(x, out)``: a dict of loss terms whose ``"loss"`` entry is optimised,
- ``preview(x)``: the rows of the image grid shown in TensorBoard,
- ``evaluate(x, out, stage, batch_idx)``: metrics of a validation or test batch beyond the loss
  terms and the reconstruction metrics (none here; denoising quality for the denoising AE).
"""

import importlib
import warnings
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from aelight.checkpoints import trust
from aelight.checkpoints.io import check_weights_fit, weight_shapes
from aelight.errors import ConfigError

EVAL_STAGES = ("val", "test")


def reconstruction_metrics(prefix: str) -> nn.ModuleDict:
    """MSE, per-image PSNR (dB, averaged over images) and SSIM, for images in [0, 1], of each stage.

    ``val_during_fit`` leaves SSIM out: torchmetrics' 11x11 Gaussian filter takes about 0.1 s per
    1,000 MNIST images on a 2-core CPU, so SSIM of the 5,000 validation images every epoch would
    cost twice a training epoch of the reference model there.
    """

    def collection(stage: str, ssim: bool = True) -> MetricCollection:
        metrics = {"mse": MeanSquaredError(), "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))}
        if ssim:
            metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
        return MetricCollection(metrics, prefix=f"{stage}/{prefix}")

    return nn.ModuleDict({**{s: collection(s) for s in EVAL_STAGES}, "val_during_fit": collection("val", ssim=False)})


def stack_terms(terms: dict[str, Tensor]) -> Tensor:
    """The loss terms of one step as one float tensor, detached."""
    return torch.stack([v.detach() for v in terms.values()]).float()


def build_network(config: dict) -> nn.Module:
    """A network from its config: ``{"class_path": "aelight.components.X", "init_args": {...}}``."""
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config.get("init_args", {}))


def _is_plain(value) -> bool:
    """True for config-like values (numbers, strings, None and lists or dicts of them)."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


class AE(L.LightningModule):
    """Autoencoder ``x' = g(f(x))`` trained with the mean squared error.

    The defaults are the reference model: a 784 -> 32 Linear+ReLU encoder, a 32 -> 784
    Linear+Sigmoid decoder and Adam with lr 1e-3, on pixels in [0, 1].
    """

    def __init__(
        self,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        init_output_bias: bool = True,
        init_weights: Optional[str] = None,
        ssim_in_fit: bool = False,
    ):
        super().__init__()
        # From the CLI, hparams hold the config of networks and optimizer (class paths and arguments).
        # Objects passed from Python (modules, classes) would be pickled into the checkpoint, which
        # then could not be loaded with weights_only=True: drop them (weights are in the state dict).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.remove_ignored_hparams([k for k, v in self.hparams.items() if not _is_plain(v)])
        self.encoder = encoder if encoder is not None else build_network(self.default_networks()["encoder"])
        if decoder is None:
            decoder = build_network(self.default_networks(self.encoder.out_features)["decoder"])
        self.decoder = decoder
        self._check_code_size()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.init_output_bias = init_output_bias
        # Staged training (e.g. fine-tuning on another objective): start from a checkpoint's weights
        # with a fresh optimizer, scheduler and epoch count. ``--ckpt_path`` cannot do this, as a
        # resume takes the model's config from the checkpoint.
        self.init_weights = init_weights
        # SSIM in fit's validation pass every epoch (``validate`` and ``test`` always report it).
        self.ssim_in_fit = ssim_in_fit
        self.metrics = reconstruction_metrics("")
        # Set by aelight.training.engine.TrainingEngine while it takes the optimizer steps (several per batch,
        # graphed or compiled); None: Lightning's automatic optimization.
        self.training_engine = None

    @classmethod
    def default_networks(cls, encoder_out_features: Optional[int] = None) -> dict[str, dict]:
        """The encoder and decoder this model builds when given none, as config (class path and
        arguments; the decoder's for an encoder of ``encoder_out_features``). The CLI writes them
        into a run's config, where the data's image shape reaches them."""
        return {
            "encoder": {"class_path": "aelight.components.MLPEncoder", "init_args": {"out_features": 32}},
            "decoder": {
                "class_path": "aelight.components.MLPDecoder",
                "init_args": {"in_features": encoder_out_features or 32},
            },
        }

    # --- what the variants override -------------------------------------------------------
    @property
    def code_size(self) -> int:
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
        recon_mse = F.mse_loss(out["recon"].float(), x.float())
        return {"loss": recon_mse, "recon_mse": recon_mse}

    def preview(self, x: Tensor) -> list[tuple[str, Tensor]]:
        """Rows of images for the TensorBoard grid, top to bottom."""
        return [("input", x), ("reconstruction", self.reconstruct(x))]

    def evaluate(self, x: Tensor, out: dict[str, Tensor], stage: str, batch_idx: int) -> None:
        """Extra metrics of a validation (``stage`` "val") or test batch, logged with ``self.log``
        or through ``update_metrics``; ``out`` is ``forward(x)``. Nothing beyond the defaults here."""

    # --- helpers for applications -------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Code to pixels in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def fit_scorer(self, normal: Tensor, held_out: Tensor) -> None:
        """Called by ``aelight anomaly`` after training, before any scoring: the normal training
        images and held-out normal (validation) images, for a score that remembers or calibrates on
        them (RestorationAE's neighbours). The reconstruction error needs neither."""

    anomaly_score_name = "reconstruction MSE"  # what anomaly_score gives, in reports and exports

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-image score, higher = more anomalous: the reconstruction's mean squared error."""
        return (self.reconstruct(x).float() - x.float()).pow(2).flatten(1).mean(1)

    # --- Lightning ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Start the decoder at the mean training image (output bias = its logit), so the first
        # steps learn digits rather than the background: one epoch of the reference model then
        # reaches a test MSE of about 0.021 instead of 0.035. Runs before a checkpoint is
        # restored, so resuming is unaffected.
        datamodule = getattr(self.trainer, "datamodule", None)
        self.check_image_shape(getattr(datamodule, "image_shape", None))
        set_bias = getattr(self.decoder, "set_output_bias", None)
        if stage == "fit" and self.init_output_bias and set_bias and hasattr(datamodule, "mean_image"):
            set_bias(datamodule.mean_image("train"))

    def check_image_shape(self, shape) -> None:
        """The networks must read and write the images the data serves. The CLI links the data's
        shape to networks named in the config; a model's built-in default networks are MNIST's."""
        for name in ("encoder", "decoder"):
            expected = getattr(getattr(self, name), "image_shape", None)
            if shape is not None and expected is not None and tuple(expected) != tuple(shape):
                raise ConfigError(
                    f"{type(self).__name__}: the {name} takes images of shape {list(expected)} but the data serves "
                    f"{list(shape)}; name the encoder and decoder in the model's config (e.g. "
                    "--model.init_args.encoder aelight.components.ConvEncoder --model.init_args.decoder "
                    "aelight.components.ConvDecoder): the data's shape then reaches them"
                )

    def on_fit_start(self) -> None:
        # A new run starts from init_weights; a resumed one (trainer.ckpt_path set, its weights
        # already restored) never reads that file again, so it may have been moved or deleted.
        if self.init_weights and self.trainer.ckpt_path is None:
            self.load_init_weights(self.init_weights)

    def load_init_weights(self, path: str) -> None:
        """Copies the weights of the checkpoint at ``path`` (loaded weights-only, its class paths
        checked, see aelight.checkpoints.trust) into this model."""
        state = trust.load_checkpoint(path)["state_dict"]
        check_weights_fit(
            self, weight_shapes(state), f"init_weights {path}", f"this {type(self).__name__}",
            fix="give a checkpoint of the same encoder and decoder",
        )  # fmt: skip
        self.load_state_dict(state)

    def training_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Loss terms of one training step on the batch ``x``: the model sees ``corrupt(x)``."""
        return self.loss_terms(x, self(self.corrupt(x)))

    def _common_step(self, batch, batch_idx: int, stage: str) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = self(x)
        terms = self.loss_terms(x, out)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=x.shape[0], sync_dist=True)
        self.update_metrics(self.stage_metrics(self.metrics, stage), out["recon"], x)
        self.evaluate(x, out, stage, batch_idx)
        return terms["loss"]

    def stage_metrics(self, metrics: nn.ModuleDict, stage: str) -> MetricCollection:
        """The metrics of ``stage`` from ``reconstruction_metrics``: without SSIM in fit's validation."""
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        return metrics["val_during_fit"] if stage == "val" and fitting and not self.ssim_in_fit else metrics[stage]

    def update_metrics(self, metrics: MetricCollection, recon: Tensor, x: Tensor) -> None:
        shape = (-1, *x.shape[1:]) if x.dim() == 4 else (-1, 1, 28, 28)
        metrics.update(recon.float().reshape(shape), x.float().reshape(shape))
        self.log_dict(metrics, batch_size=x.shape[0])

    def training_step(self, batch, batch_idx):
        if self.training_engine is not None:  # it takes this batch's optimizer steps itself
            return self.training_engine.training_step(self, batch)
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        terms = self.training_terms(x)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False)
        self.log_dict({f"train/{k}_epoch": v.detach() for k, v in terms.items()}, on_step=False, on_epoch=True)
        return {"loss": terms["loss"], "term_names": list(terms), "step_terms": stack_terms(terms)[None]}

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
        wanted = getattr(self.decoder, "in_features", self.code_size)
        if wanted != self.code_size:
            raise ConfigError(
                f"{type(self).__name__}: the decoder takes codes of size {wanted} but the encoder gives "
                f"{self.code_size}; set decoder.init_args.in_features to {self.code_size}"
            )
