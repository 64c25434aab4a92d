"""What a run made, into the result.json of the command under way (``aelight.run_result``): its
folder, the trainer's metrics and checkpoints, an application's report."""

import os
from pathlib import Path
from typing import Optional

from aelight import run_result


def record_folder(folder) -> None:
    """The run folder where the command's result.json goes (the first one named)."""
    result = run_result.current()
    if result is not None and result.folder is None:
        result.folder = os.path.abspath(folder)


def record_report(folder, report: Optional[Path] = None, numbers: Optional[dict] = None) -> None:
    """An application's report folder (where its result.json goes), report.json and its numbers."""
    result = run_result.current()
    if result is None:
        return
    result.folder = str(Path(folder).absolute())
    if report is not None:
        result.report = str(Path(report).absolute())
        result.metrics["report"] = numbers or {}


def record_trainer(
    result: run_result.RunResult, trainer, ckpt_path: Optional[str], position: Optional[tuple] = None
) -> None:
    """What the trainer ended with, into the command's result: the last value of each logged
    metric (``test/`` ones apart), each checkpoint monitor's best value, the checkpoints written
    (by ``fit``) or loaded, and the epoch and optimizer step reached (of a loaded checkpoint's
    run, ``position``: its (epoch, step), for a command that trains nothing)."""
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
    if not fitting and position is not None:
        result.epochs, result.steps = position


def _number(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def log_to_run(trainer, metrics: dict) -> None:
    """An application's figures into the run it trained, beside what fit logged, so TensorBoard's
    HParams compares runs by them."""
    if trainer.logger is not None and trainer.is_global_zero:
        trainer.logger.log_metrics(metrics, step=trainer.global_step)
        trainer.logger.finalize("success")
