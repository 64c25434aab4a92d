"""The ``aelight fit|validate|test|predict`` command line: LightningCLI's commands run through
``aelight.run.api``, every mistake of the user's and every stop on purpose as one line and an exit
code (2: the options do not parse; 1: another mistake; 130 / 143: Ctrl-C / SIGTERM; a sweep's
pruned code), never a traceback."""

import errno
import sys
import threading
from typing import Optional

from aelight import run_result, safe_files
from aelight.errors import one_line_errors
from aelight.run import api
from aelight.runtime import is_higher_rank


def _quiet_output_errors_in_threads(args) -> None:
    """TensorBoard writes event files from a thread: a full or read-only disk there would print a
    traceback, then reach the command through the next write, which reports it in one line."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in (*safe_files.NO_SPACE, errno.EROFS):
        return
    _default_thread_excepthook(args)


_default_thread_excepthook = threading.excepthook


def run_training(argv: Optional[list[str]] = None) -> None:
    """``aelight fit|validate|test|predict ...`` (``argv`` starts with the subcommand; None: the
    process's command line)."""
    threading.excepthook = _quiet_output_errors_in_threads
    with one_line_errors(where=api.output_folder):
        api.execute(sys.argv[1:] if argv is None else argv)
    result = run_result.current()
    if result is not None and result.command == "fit" and result.folder and not is_higher_rank():
        print(ended_fit(result), file=sys.stderr)


def ended_fit(result: run_result.RunResult) -> str:
    """Where a fit went, its last line: the run folder, the best checkpoint and its monitored value."""
    line = f"aelight: run folder {result.folder}"
    best = result.checkpoints.get("best")
    if best:
        values = ", ".join(f"{name} {value:.6g}" for name, value in result.metrics.get("best", {}).items())
        line += f"; best checkpoint {best}" + (f" ({values})" if values else "")
    return line
