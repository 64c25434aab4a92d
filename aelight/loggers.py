"""The former home of aelight's TensorBoard logger and run callback: run configs saved before
``aelight.training`` held them name ``aelight.loggers.TensorBoardLogger`` and
``aelight.loggers.TensorBoardRun``."""

from aelight.training.loggers import TensorBoardLogger, TensorBoardRun

__all__ = ["TensorBoardLogger", "TensorBoardRun"]
