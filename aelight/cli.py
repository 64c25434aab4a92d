"""The ``aelight`` command: LightningCLI's fit / validate / test / predict, and the applications
(``aelight reduce|features|anomaly|generate|denoise|nll``, aelight/apps/) in the same spelling.

``aelight fit --config configs/vae.yaml`` picks the variant by its class path; trainer configs in
``configs/trainer/`` switch between CPU, one GPU with bf16 and DDP.
"""

import contextlib
import errno
import glob
import importlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from typing import Optional

from jsonargparse import dict_to_namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aelight import run_result, safe_files
from aelight.callbacks import FiniteLossGuard, PredictionWriter, ReconstructionImages, ResumableRNG
from aelight.callbacks.progress import OptimizerStepProgressBar
from aelight.checkpoints import trust
from aelight.checkpoints.io import SafeCheckpointIO, check_weights_fit, model_arguments, weight_shapes
from aelight.data.base import ImageDataModule
from aelight.errors import AelightError, exit_saying, exit_with_error, user_message
from aelight.models import AE
from aelight.runtime import PRUNED_EXIT, is_higher_rank
from aelight.training.engine import TrainingEngine
from aelight.training.loggers import TensorBoardRun

CKPT_ALIASES = ("best", "last")
IMAGE_NETWORKS = ("model.init_args.encoder.init_args.image_shape", "model.init_args.decoder.init_args.image_shape")
TENSORBOARD = "aelight.training.loggers.TensorBoardLogger"  # Lightning's, with scalars on the optimizer-step axis
TENSORBOARD_LOGGERS = (TENSORBOARD, "lightning.pytorch.loggers.TensorBoardLogger")
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
# The run folder rank 0 claimed, for the other processes of a DDP run that Lightning starts with
# the same command line (they must log into the same folder, not claim their own).
RUN_VERSION_ENV = "AELIGHT_RUN_VERSION"
_claimed_run_dirs: list[str] = []  # removed again if the command fails before writing anything there
_output_folder: list[str] = []  # the run folder of the command under way, named if its disk fills up
_trainers: list = []  # the command's trainer, whose metrics and checkpoints its result.json records


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
        name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        if stage == "fit" and os.path.exists(os.path.join(folder, name)):
            name = "config_resumed.yaml"
        config = self.config
        if self.claimed_version:
            config = config.clone()
            config.trainer.logger.init_args.version = None
        text = self.parser.dump(config, skip_none=False)
        safe_files.write_text(os.path.join(folder, name), text, what="config")


class _ParserErrors(logging.Handler):
    """jsonargparse tells its parser's logger the error it is about to exit with: the one line of it
    becomes the reason in the command's result.json."""

    last: Optional[str] = None  # the newest parser error of this process, in one line

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:
            return
        _ParserErrors.last = parser_reason(record.getMessage())
        result = run_result.current()
        if result is not None:
            result.reason = _ParserErrors.last


PARSER_LOGGER = logging.getLogger("aelight.parser")
PARSER_LOGGER.propagate = False  # the parser prints its error itself
PARSER_LOGGER.addHandler(_ParserErrors())
# Lines of jsonargparse's explanation of an error that say how it searched, not what is wrong
PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
                "Expected a <class 'NoneType'>", "Given value type:", "Given value:")  # fmt: skip


# jsonargparse's words for a key inside a class given by class_path (data, model): one key path instead
NESTED_KEY = re.compile(r"""Parser key "([\w.]+)":\s*Problem with given class_path '[\w.]+':\s*Parser key "([\w.]+)""")


def parser_reason(message: str) -> str:
    """A parser error in one line: its first line and the lines that say what is wrong."""
    first, *rest = [line for line in message.splitlines() if line.strip()] or [""]
    detail = [line.strip(" -") for line in rest]
    reason = " ".join([first, *(line for line in detail if line and not line.startswith(PARSER_NOISE))])
    while NESTED_KEY.search(reason):
        reason = NESTED_KEY.sub(r'Parser key "\1.\2', reason)
    return reason[:500]


class OneLineErrorParser(LightningArgumentParser):
    """Lightning's parser with its errors in one line, ``aelight: error: <what is wrong>`` and where
    the options are listed, exit 2: jsonargparse prints the whole usage, a hundred lines, before
    the error, and a mistyped key of the data or model as the list of every class it tried."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # parsing inside, or debugging
            super().error(message, ex)
        self.logger.error(message)  # the reason a run's result.json records
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        exit_with_error(f"{parser_reason(message)} ({prog} --help lists the options)", code=2)


def image_shape_of(data: ImageDataModule) -> list[int]:
    """The shape of the images a data module serves, for the networks (a link's value)."""
    return list(data.image_shape)


def name_default_networks(model) -> None:
    """A model config that names no encoder or decoder gets its class's default networks written
    in (``default_networks``), so that the data's image shape, a link, reaches them too."""
    init = model.get("init_args")
    if init is None or (init.get("encoder") is not None and init.get("decoder") is not None):
        return
    module, _, name = model.class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name, None)
    if not hasattr(model_class, "default_networks"):
        return

    def with_image_shape(network: dict):  # the key a link writes to must be there to be written
        return dict_to_namespace({**network, "init_args": {"image_shape": None, **network.get("init_args", {})}})

    if init.get("encoder") is None:
        init.encoder = with_image_shape(model_class.default_networks()["encoder"])
    if init.get("decoder") is None:
        out_features = init.encoder.get("init_args", {}).get("out_features")
        init.decoder = with_image_shape(model_class.default_networks(out_features)["decoder"])


class AELightCLI(LightningCLI):
    def __init__(self, *args, subcommand: Optional[str] = None, **kwargs):
        self.only_subcommand = subcommand
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # an instance's: Lightning calls it as self.subcommands()
        """Lightning's subcommands, or only ``subcommand`` when the command line names it: Lightning
        builds a parser for each, and a run needs only its own (building all four tripled the
        time to parse ``aelight fit``)."""
        every = LightningCLI.subcommands()
        if self.only_subcommand in every:
            return {self.only_subcommand: every[self.only_subcommand]}
        return every

    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)
        parser.logger = PARSER_LOGGER
        return parser

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
        # How optimizer steps are taken (aelight/training/engine.py): its own key, one owner of
        # steps_per_batch, handed to the data module, which serves that many batches at once.
        parser.add_lightning_class_args(TrainingEngine, "engine")
        parser.set_defaults({"engine.steps_per_batch": 8})
        parser.link_arguments("engine.steps_per_batch", "data.init_args.steps_per_batch")
        # The data says what its images are (channels, height, width); every network reads or
        # writes that shape, handed on here, never typed in a config.
        for network in IMAGE_NETWORKS:
            parser.link_arguments("data", network, compute_fn=image_shape_of, apply_on="instantiate")
        # MNIST unless the config or command line names another data module (--data CLASS).
        parser.set_defaults({"data": {"class_path": "aelight.data.MNISTDataModule"}})
        # The model every experiment config starts from: the reference AE trained with Adam, lr 1e-3,
        # fused (one kernel for the whole update, on CPU and CUDA). A config that names another
        # model class keeps this optimizer unless it sets its own.
        adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "fused": True}}
        parser.set_defaults({"model": {"class_path": "aelight.models.AE", "init_args": {"optimizer": adam}}})

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
        # Runs right after parsing, before Lightning reads the checkpoint's hyperparameters (and
        # imports the class paths they name): resolve best/last, then load the file weights-only
        # and check every class path it names against aelight.checkpoints.trust's allow-list, so a bad or
        # crafted file gets a message and nothing is imported from it.
        subcommand, cfg = self._subcommand_config()
        self._checkpoint_shapes = None  # the checkpoint's weight shapes, checked against the model before running
        if subcommand and cfg.get("weights_only") is None:
            cfg.weights_only = True  # checkpoints are loaded without unpickling arbitrary objects
        if subcommand and cfg.get("ckpt_path"):
            logger = cfg.trainer.logger
            cfg.ckpt_path = self._resolve_ckpt(cfg.ckpt_path, logger if _is_tensorboard(logger) else None)
            # classes this command's own config or command line names are trusted like the config itself
            named = trust.named_classes(cfg.clone().as_dict())
            checkpoint = trust.load_checkpoint(cfg.ckpt_path, weights_only=cfg.weights_only, named=named)
            self._checkpoint_shapes = weight_shapes(checkpoint["state_dict"])
            self._config_from_checkpoint(subcommand, checkpoint)

    def _config_from_checkpoint(self, subcommand: str, checkpoint: dict) -> None:
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
        except SystemExit:
            sys.stderr.write("aelight: the model arguments in the checkpoint do not fit this version of aelight\n")
            raise

    def before_instantiate_classes(self) -> None:
        # Every command that writes checks its output folder before any work, and a new run claims
        # its own version folder atomically, so runs started at the same moment never share one.
        subcommand, cfg = self._subcommand_config()
        name_default_networks(cfg.model)
        logger = cfg.trainer.logger
        if not _is_tensorboard(logger):
            safe_files.check_writable(cfg.trainer.default_root_dir or ".", WRITABLE_HINT)
            _record_folder(cfg.trainer.default_root_dir or ".")
            return
        save_dir = logger.init_args.save_dir
        safe_files.check_writable(save_dir, WRITABLE_HINT)
        run_root = os.path.join(save_dir, logger.init_args.name)
        if logger.init_args.get("version") is None:
            logger.init_args.version = _run_version(run_root)
            self.save_config_kwargs = {**self.save_config_kwargs, "claimed_version": True}
        version = logger.init_args.version
        run_dir = os.path.join(run_root, version if isinstance(version, str) else f"version_{version}")
        if not is_higher_rank():  # rank 0 writes the run's files; another node's process may not know its folder
            safe_files.check_writable(run_dir, WRITABLE_HINT)
        _output_folder[:] = [run_dir]
        _record_folder(run_dir)

    def _before_run(self) -> None:
        """Before any command runs: stale temporaries of a killed run are removed from its folders,
        and a checkpoint's weights must fit the model."""
        trainer = self.trainer
        if trainer.is_global_zero and trainer.logger is not None and trainer.logger.log_dir:
            run_dir = trainer.logger.log_dir
            safe_files.remove_stale_temporaries(run_dir)
            safe_files.remove_stale_temporaries(os.path.join(run_dir, "checkpoints"))
        if self._checkpoint_shapes is not None:
            ckpt_path = self._subcommand_config()[1].ckpt_path
            check_weights_fit(self.model, self._checkpoint_shapes, f"checkpoint {ckpt_path}")

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()

    def before_fit(self) -> None:
        self._before_run()

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        _trainers[:] = [trainer]
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()  # atomic writes, clear load errors
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar:  # Lightning's default bar (not a user's own): count optimizer steps
            engine = (self.config_init[self.subcommand] if self.subcommand else self.config_init).engine
            trainer.callbacks[trainer.callbacks.index(bar)] = OptimizerStepProgressBar(
                engine.steps_per_batch, bar.refresh_rate
            )
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


def _record_folder(folder: str) -> None:
    """The run folder where the command's result.json goes (the first one named: an application that
    trains, such as ``aelight anomaly``, keeps its report folder)."""
    result = run_result.current()
    if result is not None and result.folder is None:
        result.folder = os.path.abspath(folder)


def _record_trainer(result: run_result.RunResult, trainer, ckpt_path: Optional[str]) -> None:
    """What the trainer ended with, into the command's result: the last value of each logged
    metric (``test/`` ones apart), each checkpoint monitor's best value, the checkpoints written
    (by ``fit``) or loaded."""
    logged = {name: _number(value) for name, value in trainer.callback_metrics.items()}
    result.metrics["test"] = {k: v for k, v in logged.items() if k.startswith("test/")}
    result.metrics["final"] = {k: v for k, v in logged.items() if not k.startswith("test/")}
    fitting = getattr(trainer.state.fn, "value", trainer.state.fn) == "fit"
    for callback in trainer.checkpoint_callbacks if fitting else []:  # others keep a loaded checkpoint's
        path = os.path.abspath(callback.best_model_path) if callback.best_model_path else None
        if callback.monitor is None:  # every epoch's: the last checkpoint
            result.checkpoints["last"] = path or result.checkpoints["last"]
        elif path:
            result.checkpoints["best"] = path
            if callback.best_model_score is not None:
                result.metrics["best"][callback.monitor] = _number(callback.best_model_score)
    result.checkpoints["loaded"] = os.path.abspath(ckpt_path) if ckpt_path else None
    result.epochs, result.steps = trainer.current_epoch, trainer.global_step


def _number(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _is_tensorboard(logger) -> bool:
    return getattr(logger, "class_path", None) in TENSORBOARD_LOGGERS


def _version_number(ckpt_path: str) -> int:
    """N of ``.../version_N/checkpoints/x.ckpt``, or -1."""
    match = re.search(r"version_(\d+)[/\\]checkpoints[/\\][^/\\]+$", ckpt_path)
    return int(match.group(1)) if match else -1


WRITABLE_HINT = "choose another with --trainer.logger.init_args.save_dir DIR"


def _next_version(run_root: str) -> int:
    """One more than the highest ``version_N`` folder under ``run_root`` (0 when there is none)."""
    names = os.listdir(run_root) if os.path.isdir(run_root) else []
    return max((int(m.group(1)) for d in names if (m := re.fullmatch(r"version_(\d+)", d))), default=-1) + 1


def _run_version(run_root: str) -> int:
    """Claims the next free ``version_N`` folder under ``run_root`` with an exclusive ``mkdir``:
    of several runs started at once, each gets its own. Processes of a DDP run other than rank 0
    take the one rank 0 claimed, and create nothing."""
    if is_higher_rank():
        if os.environ.get(RUN_VERSION_ENV):  # a process Lightning started beside rank 0
            return int(os.environ[RUN_VERSION_ENV])
        # a process started on another node (NODE_RANK > 0) cannot know rank 0's claim; it writes no
        # file of the run (its checkpoint folder is rank 0's, broadcast by Lightning), so it claims none
        return _next_version(run_root)
    try:
        os.makedirs(run_root, exist_ok=True)
        version = _next_version(run_root)
        while True:
            try:
                os.mkdir(os.path.join(run_root, f"version_{version}"))
                break
            except FileExistsError:  # another run took it first
                version += 1
    except OSError as err:
        raise safe_files.OutputError(
            f"output folder {run_root} is not writable ({err.strerror}); {WRITABLE_HINT}"
        ) from None
    _claimed_run_dirs.append(os.path.join(run_root, f"version_{version}"))
    os.environ[RUN_VERSION_ENV] = str(version)  # inherited by the DDP processes Lightning starts
    return version


class _Parsed(Exception):
    """Raised by ``_ParseOnlyCLI`` once the arguments have parsed, with their config."""

    def __init__(self, config):
        super().__init__()
        self.config = config


class _ParseOnlyCLI(AELightCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


def data_config(args: list[str]) -> Optional[dict]:
    """The data module that ``args`` (``aelight fit``'s options) name, as ``{"class_path": ...,
    "init_args": {...}}``, or None when they do not parse (building the run then says why).
    Nothing is instantiated."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            build_cli(args, run=False, cli_class=_ParseOnlyCLI)
    except _Parsed as parsed:
        return parsed.config.data.as_dict()
    except SystemExit:
        return None
    return None


def argument_problem(args: list[str]) -> Optional[str]:
    """What the parser of ``aelight fit`` finds wrong in ``args`` (its options, without the
    subcommand), in one line; None when they parse. Nothing is instantiated, run or written."""
    _ParserErrors.last = None
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            build_cli(args, run=False, cli_class=_ParseOnlyCLI)
    except _Parsed:
        return None
    except SystemExit:
        return _ParserErrors.last or "the options do not parse"
    return None


def build_cli(args: Optional[list] = None, run: bool = True, cli_class: type = AELightCLI) -> AELightCLI:
    first = (sys.argv[1:] if args is None else args)[:1]
    return cli_class(
        subcommand=first[0] if run and first else None,
        model_class=AE,
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
        parser_class=OneLineErrorParser,
        parser_kwargs={"prog": "aelight"},  # as the user typed it, not ``__main__.py``
        args=args,
        run=run,
    )


def user_error(err: BaseException) -> Optional[str]:
    """The one-line message for a user's mistake (``aelight.errors.user_message``), a full or
    read-only disk reported for the run's output folder."""
    return user_message(err, where=_output_folder[0] if _output_folder else None)


def _quiet_output_errors_in_threads(args) -> None:
    """TensorBoard writes event files from a thread: a full or read-only disk there would print a
    traceback, then reach the command through the next write, which reports it in one line."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in (*safe_files.NO_SPACE, errno.EROFS):
        return
    _default_thread_excepthook(args)


_default_thread_excepthook = threading.excepthook


def run_training(argv: Optional[list[str]] = None) -> None:
    """``aelight fit|validate|test|predict ...`` (``argv`` starts with the subcommand; None: the
    process's command line): the
    LightningCLI run, with the user's mistakes and a stop by SIGTERM or a sweep's pruner as one line."""
    _claimed_run_dirs.clear()
    _output_folder.clear()
    _trainers.clear()
    threading.excepthook = _quiet_output_errors_in_threads
    try:
        build_cli(argv)
    except SIGTERMException:
        exit_saying(
            "stopped by SIGTERM; the last checkpoint written is intact: continue the run with --ckpt_path last",
            SIGTERM_EXIT,
        )
    except Exception as err:
        if type(err).__name__ == "TrialPruned":  # optuna's: aelight sweep's pruning callback stopped this run
            exit_saying(f"stopped: the sweep pruned this trial ({err or 'its metric trails the others'})", PRUNED_EXIT)
        message = user_error(err)
        if message is None:
            raise
        for folder in _claimed_run_dirs:  # a run that failed before writing leaves no empty version folder
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        exit_with_error(message)
    finally:
        result = run_result.current()
        if result is not None and _trainers:
            try:
                _record_trainer(result, _trainers[0], _trainers[0].ckpt_path)
            except Exception as err:  # noqa: BLE001 - the run's own outcome goes first
                print(f"aelight: the run's metrics could not be recorded in result.json: {err}", file=sys.stderr)
