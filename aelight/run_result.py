"""``result.json``: how a run of an ``aelight`` command ended, as data.

Every command that runs (fit, validate, test, predict and each application) writes one, atomically,
in its run folder (``<save_dir>/<name>/version_N/``) or report folder: ``result.json`` is the last
command's that ran there, ``result_<command>.json`` each command's own (a ``test`` of a run's best
checkpoint logs into that run's folder, beside its ``fit``). It is also written at the path in
``AELIGHT_RESULT_FILE`` when that is set (a sweep names one per command, so it learns how a run
ended even when it failed before it had a folder). Its schema (``SCHEMA``) is in docs/runs.md:

    {"schema": 1, "command": "fit", "status": "completed", "exit_code": 0, "reason": "",
     "metrics": {"final": {...}, "best": {...}, "test": {...}, "report": {...}},
     "checkpoints": {"best": ..., "last": ..., "loaded": ...}, "folder": ..., "report": ...,
     "epochs": ..., "steps": ..., "started": "...", "seconds": 12.3, "argv": [...], "versions": {...}}

This module imports neither torch nor Lightning: a sweep reads results with it."""

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Optional

from aelight import safe_files
from aelight.errors import AelightError, ArgumentsError, RunStopped
from aelight.runtime import PRUNED_EXIT, is_higher_rank

SCHEMA = 1
RESULT_FILE = "result.json"
RESULT_FILE_ENV = "AELIGHT_RESULT_FILE"  # a further path for the result (one command's), set by a sweep
COMPLETED, FAILED, PRUNED, INTERRUPTED = "completed", "failed", "pruned", "interrupted"
INTERRUPTED_EXITS = (130, 143)  # as a shell reports Ctrl-C / SIGTERM
METRIC_GROUPS = ("final", "best", "test", "report")


@dataclasses.dataclass
class RunResult:
    """How one command's run ended. ``metrics``: ``final`` (the last value of each metric the run
    logged), ``best`` (each checkpoint monitor's best value), ``test`` (the test set's, of
    ``aelight test``), ``report`` (an application's report.json numbers, nested keys joined by /)."""

    command: str
    status: str = COMPLETED
    exit_code: int = 0
    reason: str = ""
    metrics: dict = dataclasses.field(default_factory=lambda: {group: {} for group in METRIC_GROUPS})
    checkpoints: dict = dataclasses.field(default_factory=lambda: {"best": None, "last": None, "loaded": None})
    folder: Optional[str] = None  # the run or report folder; result.json is written there
    report: Optional[str] = None  # an application's report.json
    epochs: Optional[int] = None
    steps: Optional[int] = None
    started: str = ""
    seconds: float = 0.0
    argv: list = dataclasses.field(default_factory=list)
    versions: dict = dataclasses.field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def all_metrics(self) -> dict:
        """Every metric of the run in one mapping: final, then best, test and report values (a later
        group's name wins)."""
        merged: dict = {}
        for group in METRIC_GROUPS:
            merged |= self.metrics.get(group, {})
        return merged


_current: list[RunResult] = []


def current() -> Optional[RunResult]:
    """The result of the command running in this process (None outside ``recording``)."""
    return _current[-1] if _current else None


def read(path) -> RunResult:
    """A result.json; OSError or ValueError when it is missing or not one."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "status" not in data or "command" not in data:
        raise ValueError(f"{path} is not an aelight result.json")
    return RunResult.from_dict(data)


def numbers(mapping: dict, prefix: str = "") -> dict:
    """The finite-or-not numbers of a nested mapping, nested keys joined with ``/``
    (``gaussian_0.5/autoencoder/psnr``); booleans are not numbers."""
    found = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = value
    return found


@contextlib.contextmanager
def recording(command: str, argv: list) -> Iterator[RunResult]:
    """Runs the body as the command ``command`` and writes its result.json however it ends: an exit
    code 0 is ``completed``, ``PRUNED_EXIT`` ``pruned``, 130 / 143 or Ctrl-C ``interrupted``, any
    other exit or exception ``failed`` with its one-line reason (the message of ``exit_with_error``,
    else the exception's). Exceptions and exits go on as they came."""
    result = RunResult(command=command, argv=[str(a) for a in argv])
    result.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.monotonic()
    _current.append(result)
    try:
        yield result
        result.reason = ""  # a parser's notes on the way to a value that parsed are no reason
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        said = getattr(exit_, "message", "") or result.reason  # exit_with_error's, or the parser's
        _ended(result, code, said or f"exit code {code}")
        raise
    except KeyboardInterrupt:
        _ended(result, 130, "interrupted")
        raise
    except RunStopped as stop:  # a library call's (aelight.fit): the code its command would exit with
        _ended(result, stop.exit_code, str(stop))
        raise
    except AelightError as err:  # a library call's: the one line its command would say
        _ended(result, 2 if isinstance(err, ArgumentsError) else 1, str(err)[:500])
        raise
    except BaseException as err:
        _ended(result, 1, f"{type(err).__name__}: {err}".splitlines()[0][:500])
        raise
    finally:
        result.seconds = round(time.monotonic() - start, 3)
        _current.remove(result)
        write(result)


def _ended(result: RunResult, code: int, reason: str) -> None:
    result.exit_code = code
    result.reason = reason if code else ""
    if code == 0:
        result.status = COMPLETED
    elif code == PRUNED_EXIT:
        result.status = PRUNED
    elif code in INTERRUPTED_EXITS:
        result.status = INTERRUPTED
    else:
        result.status = FAILED


def write(result: RunResult) -> None:
    """Writes the result in its folder and at ``AELIGHT_RESULT_FILE`` (rank 0 of a DDP run only).
    A result that cannot be written is said on stderr: the command's own outcome stands."""
    if is_higher_rank():
        return
    result.versions = versions()
    text = result.to_json()
    paths = (
        [Path(result.folder) / name for name in (RESULT_FILE, f"result_{result.command}.json")] if result.folder else []
    )
    if os.environ.get(RESULT_FILE_ENV):
        paths.append(Path(os.environ[RESULT_FILE_ENV]))
    for path in paths:
        if path.parent.is_dir():
            try:
                safe_files.write_text(path, text, what="result")
            except Exception as err:  # noqa: BLE001 - the run's own outcome is what the user must see
                print(f"aelight: could not write {path}: {err}", file=sys.stderr)


def versions() -> dict[str, Any]:
    """Python's, aelight's and, where this process imported them, torch's and Lightning's versions."""
    found = {"python": platform.python_version()}
    for name, module in (("aelight", None), ("torch", "torch"), ("lightning", "lightning")):
        if module is not None and module not in sys.modules:
            continue
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found
