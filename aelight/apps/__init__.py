"""The applications of an autoencoder as subcommands of ``aelight``: each evaluates a trained
checkpoint on the real MNIST test set and writes a JSON report and PNG figures into the run's folder
(``<run>/apps/<command>/``) and to TensorBoard.

The ``aelight-<command>`` console scripts of earlier releases remain as aliases: they accept the
old option spellings (``--ckpt``, ``--data-dir``, ``--val-size``…) and run the subcommand."""

import importlib
from typing import Optional

# command: (module, function, one line for `aelight --help`)
APPLICATIONS = {
    "reduce": ("represent", "main_reduce", "dimensionality reduction: 5-NN accuracy of the codes, scatter, projector"),
    "features": ("represent", "main_features", "feature extraction: a linear classifier on the frozen codes"),
    "anomaly": ("anomaly", "main", "one-class anomaly detection: train per digit, AUROC per digit and mean"),
    "generate": ("generate", "main", "a VAE's samples judged by an MNIST classifier (confidence, Frechet distance)"),
    "denoise": ("denoise", "main", "PSNR / SSIM of a denoising model against classical filters"),
    "nll": ("nll", "main", "a VAE's importance-sampled test negative log-likelihood"),
}


def run_application(command: str, argv: Optional[list] = None) -> None:
    """Runs ``aelight <command> <argv...>``."""
    module, function, _ = APPLICATIONS[command]
    getattr(importlib.import_module(f"aelight.apps.{module}"), function)(argv)
