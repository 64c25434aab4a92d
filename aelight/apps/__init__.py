"""The applications of an autoencoder as subcommands of ``aelight``: each evaluates a trained
checkpoint on the real MNIST test set and writes a JSON report and PNG figures into the run's folder
(``<run>/apps/<command>/``) and to TensorBoard.

The ``aelight-<command>`` console scripts of earlier releases remain as aliases: they accept the
old option spellings (``--ckpt``, ``--data-dir``, ``--val-size``…) and run the subcommand."""

from aelight.commands import APPLICATIONS

__all__ = ["APPLICATIONS"]
