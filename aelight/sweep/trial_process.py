"""A sweep trial's runs in a fresh child of a warm process: each worker of ``aelight sweep`` starts
one forkserver that imports torch, Lightning and aelight once; every trial forks a child from it
that runs the trial's commands (fit, then test or an application) one after the other, as
``aelight <command>`` would, its output in the trial's log. The child is a process of its own, so a
crash, a leak or a pruned run ends only that trial; the forkserver itself never touches CUDA, so a
child can use the GPU its worker was pinned to."""

import multiprocessing
import os
import signal
import sys
from typing import NamedTuple

from aelight import run_result
from aelight.errors import exit_with_error
from aelight.runtime import PARENT_ENV

# what the forkserver imports once for all its children: the run layer and, through it, torch, Lightning and
# the models (an application imports its own module in the child)
PRELOAD = ["aelight.commands", "aelight.run.api", "aelight.apps.common"]
STOP_WAIT_S = 30  # how long a stopped trial's run may take to write its last checkpoint before it is killed
# in a command's arguments: the best checkpoint that an earlier command of the trial (its fit) wrote,
# as its result.json says
BEST_CHECKPOINT = "{best_checkpoint}"


class TrialCommand(NamedTuple):
    argv: list  # ``aelight`` arguments, the command first
    result_file: str  # where the command writes its result.json (``AELIGHT_RESULT_FILE``)


_context = None


def context():
    """The worker's forkserver context, preloading ``PRELOAD`` (the server starts with the first child)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_commands(commands: list[TrialCommand], env: dict, log: str) -> int:
    """Runs ``aelight <command>`` for each command in a child process, output appended to ``log``,
    each command's result in its ``result_file``; the commands after a failed one do not run.
    Returns the exit code (0 when all succeeded, else the first failure's; minus the signal's number
    when the child was killed). A Ctrl-C or SIGTERM of the worker stops the child (SIGTERM, then
    SIGKILL after ``STOP_WAIT_S``) before it goes on."""
    child = context().Process(target=_child_main, args=(commands, env, log), name="aelight-trial")
    child.start()
    try:
        child.join()
    except BaseException:  # Ctrl-C or SIGTERM of the sweep: the run stops and writes its last checkpoint
        if child.is_alive():
            child.terminate()
            child.join(STOP_WAIT_S)
            if child.is_alive():
                child.kill()
                child.join()
        raise
    return child.exitcode


def _child_main(commands: list[TrialCommand], env: dict, log: str) -> None:
    """In the child: the trial's environment, its output in ``log`` (the file descriptors too, so
    what C code prints lands there), then each command as ``aelight`` runs it."""
    os.environ.update(env)
    # the child's parent is the forkserver, which exits with its worker: the run stops with it
    os.environ[PARENT_ENV] = str(os.getppid())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the forkserver ignores Ctrl-C; a run does not
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = ["aelight"]
    from aelight.commands import main

    best = None
    for command in commands:
        os.environ[run_result.RESULT_FILE_ENV] = command.result_file
        try:
            needs_best = any(BEST_CHECKPOINT in arg for arg in command.argv)
            if needs_best and best is None:
                with run_result.recording(command.argv[0], command.argv):
                    exit_with_error("the trial's fit wrote no best checkpoint to run this command on")
            main([arg.replace(BEST_CHECKPOINT, best) if needs_best else arg for arg in command.argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if code:
                sys.exit(code)
        sys.stdout.flush()
        sys.stderr.flush()
        best = run_result.read(command.result_file).checkpoints.get("best") or best
