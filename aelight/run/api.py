"""Training and evaluation as library calls, with the command line's parsing, defaults, trust check,
run folder and result.json; errors are raised as ``aelight.errors``' exceptions:

    import aelight
    result = aelight.fit(config="configs/ae.yaml", overrides=["--trainer.max_epochs", "2"])
    print(result.folder, result.checkpoints["best"], result.metrics["best"])
    tested = aelight.test(config="configs/ae.yaml", overrides=["--ckpt_path", "best"])
    print(tested.metrics["test"])

``aelight fit`` (``aelight.cli``), the applications that train (``aelight anomaly``) and the sweep's
pre-flight come through here too."""

import contextlib
import dataclasses
import os
import signal
import sys
import warnings
from typing import Optional, Sequence, Union

from lightning.pytorch.utilities.exceptions import SIGTERMException

from aelight import run_result
from aelight.checkpoints import trust
from aelight.errors import ArgumentsError, RunStopped, user_message
from aelight.run import recording, trainer_cli
from aelight.run.models import load_model
from aelight.run.trainer_cli import AELightCLI, build_cli
from aelight.runtime import PRUNED_EXIT

SIGTERM_EXIT, CTRL_C_EXIT = 143, 130  # 128 + the signal, as a shell reports a process it ended
CONTINUE = "the last checkpoint written is intact: continue the run with --ckpt_path last"
# LightningCLI warns when it is given arguments while the process has a command line of its own:
# here they are handed on on purpose, and the user could do nothing about it.
ARGS_WARNING = "LightningCLI's args parameter"
Configs = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]


def execute(argv: Sequence[str]) -> AELightCLI:
    """Runs ``aelight <argv>`` (fit, validate, test or predict first) in this process and returns
    its LightningCLI (trainer, model, data module). Whatever the run ends with goes into the
    result.json of the command under way (``run_result.recording``); a run folder it claimed and
    never wrote into is removed again. Raises ``ArgumentsError`` when the options do not parse,
    ``RunStopped`` on SIGTERM, Ctrl-C or a sweep's pruning, another ``AelightError`` for a
    mistake in the input."""
    trainer_cli.state = state = trainer_cli.RunState()
    try:
        return _built(argv)
    except SIGTERMException:
        raise RunStopped(f"stopped by SIGTERM; {CONTINUE}", SIGTERM_EXIT) from None
    except SystemExit as exit_:
        if type(exit_) is SystemExit and state.trainer is not None and state.trainer.interrupted:
            # Lightning's answer to Ctrl-C: it stops the run gracefully, then exits with 1
            signal.signal(signal.SIGINT, signal.default_int_handler)  # it ignores a second Ctrl-C
            raise RunStopped(f"interrupted by Ctrl-C; {CONTINUE}", CTRL_C_EXIT) from None
        raise
    except KeyboardInterrupt:
        raise RunStopped(f"interrupted by Ctrl-C before training began; {CONTINUE}", CTRL_C_EXIT) from None
    except Exception as err:
        if type(err).__name__ == "TrialPruned":  # optuna's: aelight sweep's pruning callback stopped this run
            raise RunStopped(f"stopped: the sweep pruned this trial ({err or 'its metric trails the others'})",
                             PRUNED_EXIT) from None  # fmt: skip
        if user_message(err, where=state.output_folder) is not None:
            for folder in state.claimed:  # a run that failed before writing leaves no empty version folder
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise
    finally:
        result = run_result.current()
        if result is not None and state.trainer is not None:
            try:
                recording.record_trainer(result, state.trainer, state.trainer.ckpt_path, state.checkpoint_position)
            except Exception as err:  # noqa: BLE001 - the run's own outcome goes first
                print(f"aelight: the run's metrics could not be recorded in result.json: {err}", file=sys.stderr)


def output_folder() -> Optional[str]:
    """The run folder of the newest run in this process (where a full disk is reported)."""
    return trainer_cli.state.output_folder


def arguments(config: Configs, overrides: Sequence[str]) -> list[str]:
    """``--config`` for each config file, then the overrides (command-line options)."""
    configs = [config] if isinstance(config, (str, os.PathLike)) else list(config or [])
    return [*(f"--config={os.fspath(c)}" for c in configs), *map(str, overrides)]


def _command(command: str, config: Configs, overrides: Sequence[str]) -> run_result.RunResult:
    argv = [command, *arguments(config, overrides)]
    with run_result.recording(command, argv) as result:
        execute(argv)
    return result


def fit(config: Configs = None, overrides: Sequence[str] = ()) -> run_result.RunResult:
    """``aelight fit --config CONFIG OVERRIDES...``: trains, and returns the run's result (its
    folder, checkpoints, final and best metrics), also written as its result.json."""
    return _command("fit", config, overrides)


def validate(config: Configs = None, overrides: Sequence[str] = ()) -> run_result.RunResult:
    """``aelight validate``: a checkpoint (``--ckpt_path``) on the validation split."""
    return _command("validate", config, overrides)


def test(config: Configs = None, overrides: Sequence[str] = ()) -> run_result.RunResult:
    """``aelight test``: a checkpoint (``--ckpt_path``, e.g. ``best``) on the test set; its
    metrics are the result's ``metrics["test"]``."""
    return _command("test", config, overrides)


def predict(config: Configs = None, overrides: Sequence[str] = ()) -> run_result.RunResult:
    """``aelight predict``: the test set's codes and reconstructions into the run's predictions.pt."""
    return _command("predict", config, overrides)


@dataclasses.dataclass
class Trained:
    """A fit run by an application: its result, its trainer and data module, and the classes its
    config and options named (trusted when its checkpoint is loaded back)."""

    result: run_result.RunResult
    trainer: object
    datamodule: object
    named: frozenset

    def best_model(self, device: str):
        """The model of the run's best checkpoint, through the one checkpoint → model builder."""
        return load_model(self.result.checkpoints["best"], device, named=self.named)


def train(options: Sequence[str]) -> Trained:
    """``aelight fit OPTIONS`` for a command that goes on with what it trained (an application):
    the run gets its own result.json, as from the command line."""
    argv = ["fit", *options]
    with run_result.recording("fit", argv) as result:
        cli = execute(argv)
    return Trained(result, cli.trainer, cli.datamodule, trust.named_classes(cli.config.as_dict()))


class _Parsed(Exception):
    """Raised by ``_ParseOnlyCLI`` once the arguments have parsed, with their config."""

    def __init__(self, config):
        super().__init__()
        self.config = config


class _ParseOnlyCLI(AELightCLI):
    def read_checkpoint(self) -> None:
        raise _Parsed(self.config)


def parsed(options: Sequence[str]):
    """The config that ``aelight fit OPTIONS`` would run (parsed and checked, nothing instantiated,
    run or written); ``ArgumentsError`` when the options do not parse."""
    try:
        _built(options, run=False, cli_class=_ParseOnlyCLI)
    except _Parsed as done:
        return done.config
    raise AssertionError("LightningCLI instantiated classes before reading the checkpoint")


def argument_problem(options: Sequence[str]) -> Optional[str]:
    """What the parser of ``aelight fit`` finds wrong in ``options``, in one line; None when they parse."""
    try:
        parsed(options)
    except ArgumentsError as err:
        return str(err)
    return None


def prepared(options: Sequence[str]) -> AELightCLI:
    """``aelight fit OPTIONS``' model, data module and trainer, built but not run (an untrained
    network's scores); give ``--trainer.logger=false`` for nothing to be written."""
    return _built(options, run=False)


def _built(args: Sequence[str], **kwargs) -> AELightCLI:
    """``build_cli`` on arguments handed on on purpose (no warning about the process's own)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        return build_cli(list(args), **kwargs)
