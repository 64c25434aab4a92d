"""The ``aelight`` command: LightningCLI with fit / validate / test / predict.

``aelight fit --config configs/vae.yaml`` picks the variant by its class path; trainer configs in
``configs/trainer/`` switch between CPU, one GPU with bf16 and DDP.
"""

import glob
import os
import re
import sys
import tempfile
from typing import Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelight.callbacks import FiniteLossGuard, PredictionWriter, ReconstructionImages, ResumableRNG
from aelight.checkpoint_io import SafeCheckpointIO
from aelight.data import MNISTDataModule
from aelight.errors import AelightError
from aelight.models import AE

CKPT_ALIASES = ("best", "last")
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


class AELightCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Callbacks every run gets, each configurable under its own key (e.g. --checkpoint.monitor).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
            }
        )
        # last.ckpt every epoch. Lightning 2.6's save_last writes it only when a top-k checkpoint is
        # written in the same step, i.e. only when val/loss improves: useless for resuming.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(ReconstructionImages, "images")
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(ResumableRNG, "rng")
        parser.set_defaults({"model": {"class_path": "aelight.models.AE"}})

    def _subcommand_config(self):
        """The config of the subcommand (the whole config when built with run=False), with the
        logger's ``name: auto`` replaced by the model's class name."""
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        logger = cfg.trainer.logger
        if _is_tensorboard(logger) and logger.init_args.get("name") in (None, "auto"):
            logger.init_args.name = cfg.model.class_path.rsplit(".", 1)[-1].lower()
        return subcommand, cfg

    def _parse_ckpt_path(self) -> None:
        # Runs right after parsing, before Lightning reads the checkpoint's hyperparameters:
        # resolve best/last, then check the file so a bad one gets a message, not a traceback.
        subcommand, cfg = self._subcommand_config()
        if subcommand and cfg.get("weights_only") is None:
            cfg.weights_only = True  # checkpoints are loaded without unpickling arbitrary objects
        if subcommand and cfg.get("ckpt_path"):
            logger = cfg.trainer.logger
            cfg.ckpt_path = self._resolve_ckpt(cfg.ckpt_path, logger if _is_tensorboard(logger) else None)
            SafeCheckpointIO().load_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=cfg.weights_only)
            if not cfg.weights_only:
                return  # Lightning's hyperparameter read is weights-only and would refuse the file
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        subcommand, cfg = self._subcommand_config()
        logger = cfg.trainer.logger
        tensorboard = _is_tensorboard(logger)
        if subcommand == "fit":
            save_dir = logger.init_args.save_dir if tensorboard else cfg.trainer.default_root_dir or "."
            _check_writable(save_dir)

    def before_fit(self) -> None:
        # With several optimizer steps per batch (steps_per_batch > 1) the model steps its optimizer
        # itself, and Lightning refuses its trainer-level clipping and accumulation for such models.
        model, trainer = self.model, self.trainer
        if model.automatic_optimization:
            return
        if trainer.accumulate_grad_batches != 1:
            # steps_per_batch > 1 or cuda_graph: true (on in configs/trainer/gpu_bf16.yaml) make the model step itself
            option, wanted, now = (
                ("steps_per_batch", 1, model.steps_per_batch)
                if model.steps_per_batch > 1
                else ("cuda_graph", "false", "true")
            )
            raise AelightError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} needs "
                f"model.init_args.{option}: {wanted} (it is {now}); set "
                f"--model.init_args.{option} {wanted}, or raise data.batch_size instead of accumulating"
            )
        if trainer.gradient_clip_val:  # the model clips before each of its steps, as Lightning would
            algorithm = trainer.gradient_clip_algorithm
            model.gradient_clipping = (trainer.gradient_clip_val, algorithm.value if algorithm else None)
            trainer.gradient_clip_val = None

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()  # atomic writes, clear load errors
        return trainer

    @staticmethod
    def _resolve_ckpt(ckpt_path: str, logger) -> str:
        """Turn ``best`` / ``last`` into the newest such checkpoint of this experiment, and log into
        the checkpoint's run folder (``version_N``), so a resumed run continues its own logs."""
        if logger is None:
            if ckpt_path in CKPT_ALIASES:
                raise AelightError(f"--ckpt_path {ckpt_path} needs the TensorBoard logger to find runs; give a file")
            return ckpt_path
        run_root = os.path.join(logger.init_args.save_dir, logger.init_args.name)
        if ckpt_path in CKPT_ALIASES:
            found = glob.glob(os.path.join(run_root, "version_*", "checkpoints", f"{ckpt_path}.ckpt"))
            if not found:
                raise AelightError(
                    f"--ckpt_path {ckpt_path}: no {ckpt_path}.ckpt under {run_root}/version_*/checkpoints/; "
                    "train first with `aelight fit --config ...` (same config), or give a checkpoint file"
                )
            ckpt_path = max(found, key=_version_number)
        if not os.path.isfile(ckpt_path):
            raise AelightError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        version = _version_number(ckpt_path)
        if version >= 0 and logger.init_args.get("version") is None and os.path.isdir(run_root):
            experiment = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path))))
            if os.path.samefile(experiment, run_root):  # a checkpoint of this experiment: log into its run
                logger.init_args.version = version
        return ckpt_path


def _is_tensorboard(logger) -> bool:
    return getattr(logger, "class_path", None) == TENSORBOARD


def _version_number(ckpt_path: str) -> int:
    """N of ``.../version_N/checkpoints/x.ckpt``, or -1."""
    match = re.search(r"version_(\d+)[/\\]checkpoints[/\\][^/\\]+$", ckpt_path)
    return int(match.group(1)) if match else -1


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise AelightError(
            f"output folder {os.path.abspath(folder)} is not writable ({err.strerror}); "
            "choose another with --trainer.logger.init_args.save_dir DIR"
        ) from None


def build_cli(args: Optional[list] = None, run: bool = True) -> AELightCLI:
    return AELightCLI(
        model_class=AE,
        subclass_mode_model=True,
        datamodule_class=MNISTDataModule,
        seed_everything_default=42,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "max_epochs": 50,
            "logger": {"class_path": TENSORBOARD, "init_args": {"save_dir": "lightning_logs", "name": "auto"}},
        },
        args=args,
        run=run,
    )


def main(args: Optional[list] = None) -> None:
    try:
        build_cli(args)
    except AelightError as err:
        print(f"aelight: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
