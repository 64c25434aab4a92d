"""What TensorBoard shows of a run: one step axis, and HParams that compare runs.

- **One step axis.** aelight's training engine takes several optimizer steps per Lightning batch,
  so Lightning's own step for scalars (batches) is not the step of the images, of
  ``trainer.global_step`` or of the checkpoints. ``TensorBoardLogger`` writes every scalar at the
  optimizer step instead: during ``fit`` the trainer's ``global_step``; during ``validate`` /
  ``test`` / ``predict`` the step of the checkpoint evaluated, so a test result stands at the end of
  the curve it belongs to and never replaces a value ``fit`` wrote. Lightning's ``epoch`` scalar
  is left out and the learning rate is ``train/lr-<optimizer>``, so the groups TensorBoard opens
  first are the results: ``test``, ``train``, ``val``.
- **HParams.** Each run registers a short, readable set of settings (``comparison_hparams``: the
  model class, code size, hidden sizes, optimizer and learning rate, batch size, data set, epochs,
  seed and the variant's own arguments, such as ``beta`` or ``noise_level``) and the metrics
  ``METRICS``: final and best (at the lowest ``val/loss``) validation loss, MSE and PSNR, and the
  test metrics once ``aelight test`` has run on the run's checkpoint (a one-class run of
  ``aelight anomaly``: its AUROC and F1). Every run lists the same
  columns (those of every aelight model, and its own), so TensorBoard's table holds them all
  whichever run it reads them from.

``TensorBoardRun``, a callback every aelight run has, tells the logger which step it is at and what
to register, and logs the best validation values.
"""

import inspect
import os
import time
from typing import Callable, Optional

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from aelight.training.lightning_compat import summary_file_writer

VAL_METRICS = ("loss", "mse", "psnr")
METRICS = (  # in the order of HParams' metric columns: test results first, to sort runs by them
    "test/mse",
    "test/psnr",
    "test/ssim",
    "test/loss",
    "test/elbo",
    "anomaly/auroc",  # a one-class run of aelight anomaly (its digit's AUROC and F1 on the test set)
    "anomaly/f1",
    *(f"val/{m}" for m in VAL_METRICS),
    *(f"val/{m}_best" for m in VAL_METRICS),
)
# Model arguments that do not describe the experiment (where the weights came from, what is
# measured how often) and stay out of the HParams columns.
NOT_COMPARED = {"init_output_bias", "init_weights", "ssim_in_fit", "eval_noise_seed", "test_nll_samples",
                "active_threshold", "edges_per_step"}  # fmt: skip
# The columns every run has.
BASE_COLUMNS = {
    "model": str,
    "code_size": float,
    "hidden": str,
    "lr": float,
    "batch_size": float,
    "dataset": str,
    "max_epochs": float,
    "seed": float,
    "encoder": str,
    "optimizer": str,
    "lr_scheduler": str,
    "classes": str,
    "binarize": bool,
}
TYPES = {str: "DATA_TYPE_STRING", float: "DATA_TYPE_FLOAT64", bool: "DATA_TYPE_BOOL"}
# TensorBoard lists the columns marked as differing between runs first (then by name) and shows the
# first five: these, which tell runs apart; the others are a tick away.
SHOWN_FIRST = ("model", "code_size", "hidden", "lr", "batch_size")


def _column_type(value) -> Optional[type]:
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    if isinstance(value, str):
        return str
    return None


def variant_columns(model_class: type) -> dict[str, type]:
    """A model class's own arguments with a plain value (number, string, boolean), by their default."""
    columns = {}
    for cls in model_class.__mro__:
        if cls is object or not issubclass(cls, L.LightningModule) or cls is L.LightningModule:
            continue
        for name, param in inspect.signature(cls.__init__).parameters.items():
            kind = _column_type(param.default)
            if kind is None and param.default is None and "float" in str(param.annotation):
                kind = float
            if kind is not None and name not in NOT_COMPARED and name not in BASE_COLUMNS:
                columns.setdefault(name, kind)
    return columns


def all_columns(model_class: type) -> dict[str, type]:
    """Every run's columns: the base ones, the arguments of every aelight model, and its own."""
    from aelight import models

    columns = dict(BASE_COLUMNS)
    for cls in (*(getattr(models, name) for name in models.__all__), model_class):
        for name, kind in variant_columns(cls).items():
            columns.setdefault(name, kind)
    return columns


def _class_name(spec) -> Optional[str]:
    if isinstance(spec, dict) and "class_path" in spec:
        return spec["class_path"].rsplit(".", 1)[-1]
    return getattr(spec, "__name__", None)


def comparison_hparams(pl_module, datamodule, trainer) -> dict:
    """The run's settings under readable names, for TensorBoard's HParams (values: str, number, bool)."""
    hp = dict(pl_module.hparams)
    encoder = getattr(pl_module, "encoder", None)
    encoder_args = (hp.get("encoder") or {}).get("init_args", {}) if isinstance(hp.get("encoder"), dict) else {}
    hidden = encoder_args.get("hidden_dims", encoder_args.get("channels"))
    optimizer = hp.get("optimizer")
    values = {
        "model": type(pl_module).__name__,
        "code_size": getattr(pl_module, "code_size", None),
        "hidden": ",".join(str(h) for h in hidden) if isinstance(hidden, (list, tuple)) else hidden,
        "encoder": type(encoder).__name__ if encoder is not None else None,
        "optimizer": _class_name(optimizer),
        "lr": (optimizer or {}).get("init_args", {}).get("lr") if isinstance(optimizer, dict) else None,
        "lr_scheduler": _class_name(hp.get("lr_scheduler")),
        "max_epochs": trainer.max_epochs,
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED", "").isdigit() else None,
    }
    if trainer.optimizers:  # the optimizer as built (also for a model made in Python)
        values["optimizer"] = type(trainer.optimizers[0]).__name__
        values["lr"] = trainer.optimizers[0].defaults.get("lr")
    if datamodule is not None:
        data = dict(getattr(datamodule, "hparams", {}))
        values["batch_size"] = data.get("batch_size")
        values["dataset"] = data.get("dataset")
        values["binarize"] = data.get("binarize")
        classes = data.get("classes")
        values["classes"] = ",".join(str(c) for c in classes) if classes else "all"
    for name in variant_columns(type(pl_module)):
        values[name] = hp.get(name, getattr(pl_module, name, None))
    return {k: v for k, v in values.items() if _column_type(v) is not None}


def hparams_summaries(values: dict, columns: dict[str, type]) -> tuple[Summary, Summary]:
    """TensorBoard's HParams records: the experiment (columns and metrics) and this run's session start."""
    experiment = api_pb2.Experiment(
        hparam_infos=[
            api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value(TYPES[kind]), differs=name in SHOWN_FIRST)
            for name, kind in columns.items()
        ],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in METRICS],
    )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in values.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = float(value)
        else:
            start.hparams[name].string_value = str(value)
    return _summary(metadata.EXPERIMENT_TAG, experiment=experiment), _summary(
        metadata.SESSION_START_INFO_TAG, session_start_info=start
    )


def _summary(tag: str, **content) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger with scalars on the optimizer-step axis and HParams that hold
    the run's real metrics (see the module's docstring); without ``TensorBoardRun`` it behaves as
    Lightning's (less the placeholder ``hp_metric``)."""

    def __init__(self, *args, default_hp_metric: bool = False, **kwargs):
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)
        self.step_of: Optional[Callable[[], int]] = None
        self.evaluating = False
        self.comparison: Optional[tuple[dict, dict]] = None  # (values, columns) for HParams

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        if self.step_of is not None:
            step = self.step_of()
        metrics = {(f"train/{k}" if k.startswith("lr-") else k): v for k, v in metrics.items() if k != "epoch"}
        super().log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None) -> None:
        had_events = self._has_events()
        super().log_hyperparams(params, metrics)  # hparams.yaml
        # Evaluating into a run that fit registered keeps fit's registration (its max_epochs…).
        if self.comparison is not None and not (self.evaluating and had_events):
            values, columns = self.comparison
            writer = summary_file_writer(self.experiment)
            for summary in hparams_summaries(values, columns):
                writer.add_summary(summary)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.comparison is not None:  # the run registered in HParams: its status there
            end = plugin_data_pb2.SessionEndInfo(
                status=api_pb2.Status.Value("STATUS_SUCCESS" if status == "success" else "STATUS_FAILURE"),
                end_time_secs=time.time(),
            )
            summary_file_writer(self.experiment).add_summary(
                _summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)
            )
        super().finalize(status)

    def _has_events(self) -> bool:
        folder = self.log_dir
        return os.path.isdir(folder) and any(f.startswith("events.out.tfevents") for f in os.listdir(folder))


class TensorBoardRun(L.Callback):
    """Tells aelight's ``TensorBoardLogger`` its step (the trainer's ``global_step`` while fitting,
    the evaluated checkpoint's while evaluating) and what to register in HParams, and logs
    ``val/{loss,mse,psnr}_best``: the validation values of the epoch with the lowest ``val/loss``."""

    def __init__(self):
        self.checkpoint_step: Optional[int] = None
        self.best: Optional[dict] = None

    def _loggers(self, trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.checkpoint_step = None
        evaluating = stage != "fit"
        for logger in self._loggers(trainer):
            logger.evaluating = evaluating
            logger.step_of = self._evaluated_step(trainer) if evaluating else lambda: trainer.global_step
        if evaluating:
            self._register(trainer, pl_module)

    def _evaluated_step(self, trainer: L.Trainer) -> Callable[[], int]:
        # A checkpoint loaded for evaluation gives its step; evaluating the model just trained
        # (trainer.test(model) after fit) gives the trainer's.
        return lambda: self.checkpoint_step if self.checkpoint_step is not None else trainer.global_step

    def _register(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._loggers(trainer)
        if loggers:
            comparison = (comparison_hparams(pl_module, trainer.datamodule, trainer), all_columns(type(pl_module)))
            for logger in loggers:
                logger.comparison = comparison

    # Lightning registers the hyperparameters after on_fit_start (once the optimizer is built) and,
    # when evaluating, after setup.
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._register(trainer, pl_module)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.checkpoint_step = int(checkpoint.get("global_step", 0))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if "val/loss" not in metrics:
            return
        current = {m: float(metrics[f"val/{m}"]) for m in VAL_METRICS if f"val/{m}" in metrics}
        if self.best is None or current["loss"] < self.best["loss"]:
            self.best = current
        # The same on every rank (val/loss is synced); sync_dist only spares DDP runs Lightning's warning.
        pl_module.log_dict({f"val/{m}_best": v for m, v in self.best.items()}, sync_dist=True)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
