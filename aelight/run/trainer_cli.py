"""aelight's LightningCLI: the parser every training command shares (its defaults, callbacks and
links), the checkpoint trust check, and the run folder each run claims. ``aelight.run.api`` runs
it; the command line (``aelight.cli``) and a script or notebook (``aelight.fit``) go through there.

``aelight fit --config configs/vae.yaml`` picks the variant by its class path; trainer configs in
``configs/trainer/`` switch between CPU, one GPU with bf16 and DDP."""

import dataclasses
import os
from typing import Optional

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelight import safe_files
from aelight.callbacks.progress import OptimizerStepProgressBar
from aelight.checkpoints import trust
from aelight.checkpoints.io import SafeCheckpointIO, check_weights_fit, model_arguments, weight_shapes
from aelight.data.base import ImageDataModule
from aelight.errors import ArgumentsError
from aelight.models import AE
from aelight.run import folders, recording
from aelight.run.arguments import ArgumentsParser, add_run_arguments, name_default_networks
from aelight.runtime import is_higher_rank
from aelight.training.lightning_compat import CheckpointCheckingCLI
from aelight.training.loggers import TensorBoardRun
from aelight.training.trainer import Trainer

TENSORBOARD = "aelight.training.loggers.TensorBoardLogger"  # Lightning's, with scalars on the optimizer-step axis
TENSORBOARD_LOGGERS = (TENSORBOARD, "lightning.pytorch.loggers.TensorBoardLogger")


@dataclasses.dataclass
class RunState:
    """What the run under way in this process has made so far: the folder it claimed (removed again
    if the command fails before writing anything there), its output folder (named if the disk
    fills up), its trainer (whose metrics and checkpoints its result.json records)."""

    claimed: list = dataclasses.field(default_factory=list)
    output_folder: Optional[str] = None
    trainer: object = None
    checkpoint_position: Optional[tuple] = None  # the loaded checkpoint's (epoch, optimizer step)


state = RunState()


class RunConfigSaver(SaveConfigCallback):
    """Saves the command's resolved config in the run folder without ever replacing the training
    config: ``fit`` writes ``config.yaml`` (``config_resumed.yaml`` when it resumes into a folder
    that has one), ``validate`` / ``test`` / ``predict`` write ``config_<command>.yaml``.
    Written atomically, on rank 0 only. The file is a config: code-equivalent input (its class
    paths name code to run), to be trusted like a script."""

    def __init__(self, parser, config, claimed_version: bool = False, **kwargs):
        kwargs["save_to_log_dir"] = False  # save_config below does it, never overwriting fit's file
        super().__init__(parser, config, **kwargs)
        # A version number aelight chose is not part of the config: running the saved file again
        # starts a new run instead of writing into this one.
        self.claimed_version = claimed_version

    def save_config(self, trainer, pl_module, stage: str) -> None:
        logger = trainer.logger
        folder = logger.log_dir if logger is not None and logger.log_dir else trainer.default_root_dir
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        name = folders.RUN_CONFIG if stage == "fit" else f"config_{stage}.yaml"
        if stage == "fit" and os.path.exists(os.path.join(folder, name)):
            name = "config_resumed.yaml"
        config = self.config
        if self.claimed_version:
            config = config.clone()
            config.trainer.logger.init_args.version = None
        text = self.parser.dump(config, skip_none=False)
        safe_files.write_text(os.path.join(folder, name), text, what="config")


class AELightCLI(CheckpointCheckingCLI):
    def __init__(self, *args, subcommand: Optional[str] = None, **kwargs):
        self.only_subcommand = subcommand
        command_line = kwargs.get("args") or []
        # `--model mylab.L1AE` over a config's model: the run is named after the model it trains
        # (l1ae), not the config's name (ae), so that `--ckpt_path best` on the same command line
        # finds it and a plain run of the config does not pick it up
        self.named_after_model = gives(command_line, "--model") and not any(
            gives(command_line, option) for option in ("--trainer.logger", "--trainer.logger.init_args.name")
        )
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # an instance's: Lightning calls it as self.subcommands()
        """Lightning's subcommands, or only ``subcommand`` when the command line names it: Lightning
        builds a parser for each, and a run needs only its own (building all four tripled the
        time to parse ``aelight fit``)."""
        every = CheckpointCheckingCLI.subcommands()
        if self.only_subcommand in every:
            return {self.only_subcommand: every[self.only_subcommand]}
        return every

    def add_arguments_to_parser(self, parser) -> None:
        add_run_arguments(parser)

    def subcommand_config(self):
        """The config of the subcommand (the whole config when built with run=False), with the
        logger's ``name: auto`` replaced by the model's class name (also a config's name when the
        command line replaces its ``--model``)."""
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        logger = cfg.trainer.logger
        if is_tensorboard(logger) and (self.named_after_model or logger.init_args.get("name") in (None, "auto")):
            logger.init_args.name = cfg.model.class_path.rsplit(".", 1)[-1].lower()
        return subcommand, cfg

    def read_checkpoint(self) -> None:
        # Runs right after parsing, before Lightning would read the checkpoint's hyperparameters
        # (and import the class paths they name): resolve best/last, then load the file weights-only
        # and check every class path it names against the allow-list, so a bad or crafted file gets
        # a message and nothing is imported from it.
        subcommand, cfg = self.subcommand_config()
        self.checkpoint_shapes = None  # the checkpoint's weight shapes, checked against the model before running
        if subcommand and cfg.get("weights_only") is None:
            cfg.weights_only = True  # checkpoints are loaded without unpickling arbitrary objects
        if subcommand and cfg.get("ckpt_path"):
            logger = cfg.trainer.logger
            root = None  # without TensorBoard's logger there is no experiment folder to look in
            if is_tensorboard(logger):
                root = folders.run_root(logger.init_args.save_dir, logger.init_args.name)
            cfg.ckpt_path, version = folders.resolve_checkpoint(cfg.ckpt_path, root)
            if version is not None and logger.init_args.get("version") is None:
                logger.init_args.version = version  # a checkpoint of this experiment: log into its run
            # classes this command's own config or command line names are trusted like the config itself
            named = trust.named_classes(cfg.clone().as_dict())
            checkpoint = trust.load_checkpoint(cfg.ckpt_path, weights_only=cfg.weights_only, named=named)
            self.checkpoint_shapes = weight_shapes(checkpoint["state_dict"])
            state.checkpoint_position = (checkpoint.get("epoch"), checkpoint.get("global_step"))
            self.config_from_checkpoint(subcommand, checkpoint)

    def config_from_checkpoint(self, subcommand: str, checkpoint: dict) -> None:
        """What LightningCLI does with a checkpoint's hyperparameters (the model's arguments of a
        resumed run come from the file), less the speed settings that old checkpoints kept there
        (now the engine's, set by the command line)."""
        hparams = model_arguments(checkpoint.get("hyper_parameters"))
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except ArgumentsError as err:
            raise ArgumentsError(f"the model arguments in the checkpoint do not fit this version of aelight: {err}",
                                 err.prog) from None  # fmt: skip

    def before_instantiate_classes(self) -> None:
        # Every command that writes checks its output folder before any work, and a new run claims
        # its own version folder atomically, so runs started at the same moment never share one.
        subcommand, cfg = self.subcommand_config()
        name_default_networks(cfg.model)
        logger = cfg.trainer.logger
        if not is_tensorboard(logger):
            safe_files.check_writable(cfg.trainer.default_root_dir or ".", folders.WRITABLE_HINT)
            recording.record_folder(cfg.trainer.default_root_dir or ".")
            return
        save_dir = logger.init_args.save_dir
        safe_files.check_writable(save_dir, folders.WRITABLE_HINT)
        root = folders.run_root(save_dir, logger.init_args.name)
        if logger.init_args.get("version") is None:
            logger.init_args.version, claimed = folders.claim_version(root)
            state.claimed += [claimed] if claimed else []
            self.save_config_kwargs = {**self.save_config_kwargs, "claimed_version": True}
        run_dir = folders.version_folder(root, logger.init_args.version)
        if not is_higher_rank():  # rank 0 writes the run's files; another node's process may not know its folder
            safe_files.check_writable(run_dir, folders.WRITABLE_HINT)
        state.output_folder = run_dir
        recording.record_folder(run_dir)

    def before_run(self) -> None:
        """Before any command runs: stale temporaries of a killed run are removed from its folders,
        and a checkpoint's weights must fit the model."""
        trainer = self.trainer
        if trainer.is_global_zero and trainer.logger is not None and trainer.logger.log_dir:
            run_dir = trainer.logger.log_dir
            safe_files.remove_stale_temporaries(run_dir)
            safe_files.remove_stale_temporaries(os.path.join(run_dir, folders.CHECKPOINTS))
        if self.checkpoint_shapes is not None:
            ckpt_path = self.subcommand_config()[1].ckpt_path
            check_weights_fit(self.model, self.checkpoint_shapes, f"checkpoint {ckpt_path}")

    def before_validate(self) -> None:
        self.before_run()

    def before_test(self) -> None:
        self.before_run()

    def before_predict(self) -> None:
        self.before_run()

    def before_fit(self) -> None:
        self.before_run()

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        state.trainer = trainer
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()  # atomic writes, clear load errors
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar:  # Lightning's default bar (not a user's own): count optimizer steps
            engine = (self.config_init[self.subcommand] if self.subcommand else self.config_init).engine
            trainer.callbacks[trainer.callbacks.index(bar)] = OptimizerStepProgressBar(
                engine.steps_per_batch, bar.refresh_rate
            )
        return trainer


def gives(command_line: list, option: str) -> bool:
    """Whether a command line gives ``option`` itself (``--model X`` or ``--model=X``)."""
    return any(arg == option or arg.startswith(option + "=") for arg in command_line if isinstance(arg, str))


def is_tensorboard(logger) -> bool:
    return getattr(logger, "class_path", None) in TENSORBOARD_LOGGERS


def build_cli(args: list, run: bool = True, cli_class: type = AELightCLI) -> AELightCLI:
    """aelight's LightningCLI on ``args`` (the subcommand first when ``run``), run or only built."""
    return cli_class(
        subcommand=args[0] if run and args else None,
        model_class=AE,
        trainer_class=Trainer,  # Lightning's, its batch limits parsed as counts or fractions
        subclass_mode_model=True,
        datamodule_class=ImageDataModule,
        subclass_mode_data=True,
        seed_everything_default=42,
        auto_configure_optimizers=False,
        save_config_callback=RunConfigSaver,
        trainer_defaults={
            "max_epochs": 50,
            "logger": {"class_path": TENSORBOARD, "init_args": {"save_dir": "lightning_logs", "name": "auto"}},
            "callbacks": [TensorBoardRun()],  # added to every run's callbacks: step axis, HParams
        },
        parser_class=ArgumentsParser,
        # as the user typed it, not ``__main__.py``; an abbreviated option (--trainer.max_epoch) is refused,
        # not taken silently for the one it abbreviates
        parser_kwargs={"prog": "aelight", "allow_abbrev": False},
        args=args,
        run=run,
    )
