"""User-facing errors: the CLI prints these as one message and exits non-zero, no traceback."""

import contextlib
import errno
import sys
from typing import Callable, Iterator, NoReturn, Optional, Union


class AelightError(Exception):
    """A mistake in the user's input or environment (data, paths, config values)."""


class DataError(AelightError):
    """Dataset files are missing, unreadable or malformed."""


class NonFiniteLossError(AelightError):
    """Training produced a NaN or infinite loss."""


class ConfigError(AelightError, ValueError):
    """A config value that parses but cannot work (mismatched sizes, a non-positive std...)."""


class ArgumentsError(ConfigError):
    """A command's options or config do not parse (an unknown key, a value of the wrong type); the
    message is the parser's reason in one line, ``prog`` the command whose ``--help`` lists them."""

    def __init__(self, reason: str, prog: str = "aelight"):
        super().__init__(reason)
        self.prog = prog


class RunStopped(AelightError):
    """A run stopped before its end on purpose: by SIGTERM or Ctrl-C (its last checkpoint intact)
    or by a sweep's pruner. ``exit_code`` is what the command exits with (143, 130, or the pruned
    code), the message what it says."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def user_message(err: BaseException, where: Optional[str] = None) -> Optional[str]:
    """The one-line message for an exception that is a user's mistake, also when a library wrapped
    it (``__cause__`` / ``__context__``), or None for a bug, which keeps its traceback. ``where``:
    the output folder a full or read-only disk is reported for when the error names no file.
    Lightning's configuration errors are the user's too; no Lightning error exists before
    Lightning is imported, so a command that never imports it never pays for it here."""
    seen = set()
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, AelightError):
            return str(err)
        if isinstance(err, OSError) and err.errno in (*NO_SPACE, errno.EROFS):
            where = err.filename or where
            reason = "the disk is full" if err.errno in NO_SPACE else "the file system is read-only"
            return (
                f"could not write the run's output{f' in {where}' if where else ''}: {reason}; checkpoints "
                "written before are intact. Free space or choose another folder with "
                "--trainer.logger.init_args.save_dir DIR"
            )
        if lightning is not None and isinstance(err, lightning.MisconfigurationException):
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            torch = sys.modules.get("torch")
            if "gpu" in message.lower() and torch is not None and not torch.cuda.is_available():
                message += (
                    "; this machine has no usable GPU: train on the CPU with --config configs/trainer/cpu.yaml "
                    "(or --trainer.accelerator cpu)"
                )
            return message
        err = err.__cause__ or err.__context__
    return None


class UserExit(SystemExit):
    """The exit of a command that says why it stopped: ``message``, the one line it printed (a
    run's result.json records it as the reason)."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message


def exit_with_error(message: str, code: int = 1) -> NoReturn:
    """How every aelight command ends on a user's mistake: one line on stderr, exit code 1."""
    print(f"aelight: error: {message}", file=sys.stderr)
    raise UserExit(code, message)


def exit_saying(message: str, code: int) -> NoReturn:
    """A command stopped on purpose (by SIGTERM, by a sweep's pruner): one line on stderr, ``code``."""
    print(f"aelight: {message}", file=sys.stderr)
    raise UserExit(code, message)


@contextlib.contextmanager
def one_line_errors(
    where: Union[str, Callable[[], Optional[str]], None] = None, cleanup: Optional[Callable[[], None]] = None
) -> Iterator[None]:
    """How every aelight command ends when it cannot go on: options that do not parse exit 2, a run
    stopped on purpose its own code, any other mistake of the user's (``user_message``) 1, each
    with one line on stderr; ``cleanup`` runs first for a mistake (e.g. removing an empty output
    folder). A bug keeps its traceback. ``where``: the output folder (or a function giving it) that
    a full disk is reported for."""
    try:
        yield
    except ArgumentsError as err:
        exit_with_error(f"{err} ({err.prog} --help lists the options)", code=2)
    except RunStopped as stop:
        exit_saying(str(stop), stop.exit_code)
    except KeyboardInterrupt:  # outside a training run, whose trainer answers Ctrl-C itself
        exit_saying("interrupted by Ctrl-C; what was written before is intact: run the command again", 130)
    except Exception as err:
        message = user_message(err, where=where() if callable(where) else where)
        if message is None:
            raise
        if cleanup is not None:
            cleanup()
        exit_with_error(message)
