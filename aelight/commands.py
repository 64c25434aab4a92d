"""``aelight``: the command table and the entry point.

Every command is a row of ``COMMANDS``: where it runs and the line ``aelight --help`` prints for
it. The entry point imports only the module of the command asked for, so ``aelight sweep`` and its
workers start without torch or Lightning (a sweep's trials import them once per worker, in
``aelight.sweep.trial_process``). Every command but the sweep records how it ended in a result.json
(``aelight.run_result``)."""

import importlib
import os
import sys
from typing import NamedTuple, Optional

from aelight import run_result
from aelight.errors import one_line_errors
from aelight.runtime import (
    PARENT_ENV,
    ctrl_c_deferred,
    quiet_library_notices,
    skip_repeated_gpu_probe,
    stop_with_parent,
)


class Command(NamedTuple):
    group: str  # the heading of ``aelight --help`` it is listed under
    module: str
    function: str  # called with the command's own arguments (training: the whole command line)
    summary: str
    uses_torch: bool = True  # False: the command runs without importing torch (the sweep, score)


TRAINING, APPLICATION, DEPLOYMENT, MANY_RUNS = (
    "Training and evaluation (runs under lightning_logs/<name>/version_N/):",
    "Applications of a trained checkpoint (reports under <run>/apps/<command>/):",
    "A trained anomaly detector outside aelight:",
    "Many runs:",
)
COMMANDS = {
    "fit": Command(TRAINING, "aelight.cli", "run_training",
                   "train a model: aelight fit --config configs/ae.yaml --data.data_dir data/"),
    "validate": Command(TRAINING, "aelight.cli", "run_training", "evaluate a checkpoint on the validation split"),
    "test": Command(TRAINING, "aelight.cli", "run_training",
                    "evaluate a checkpoint on the test set: aelight test --config configs/ae.yaml --ckpt_path best"),
    "predict": Command(TRAINING, "aelight.cli", "run_training",
                       "write the test set's codes and reconstructions to <run>/predictions.pt"),
    "reduce": Command(APPLICATION, "aelight.apps.represent", "main_reduce",
                      "dimensionality reduction: 5-NN accuracy of the codes, scatter, projector"),
    "features": Command(APPLICATION, "aelight.apps.represent", "main_features",
                        "feature extraction: a linear classifier on the frozen codes"),
    "anomaly": Command(APPLICATION, "aelight.apps.anomaly", "main",
                       "one-class anomaly detection: train per digit, AUROC per digit and mean"),
    "generate": Command(APPLICATION, "aelight.apps.generate", "main",
                        "a VAE's samples judged by an MNIST classifier (confidence, Frechet distance)"),
    "denoise": Command(APPLICATION, "aelight.apps.denoise", "main",
                       "PSNR / SSIM of a denoising model against classical filters"),
    "nll": Command(APPLICATION, "aelight.apps.nll", "main", "a VAE's importance-sampled test negative log-likelihood"),
    "export": Command(DEPLOYMENT, "aelight.deploy.export", "main",
                      "a checkpoint as model.onnx + metadata.json (threshold chosen on validation images)"),
    "score": Command(DEPLOYMENT, "aelight.deploy.score", "main",
                     "an exported detector on image files: CSV path,score,anomalous (onnxruntime only)",
                     uses_torch=False),
    "sweep": Command(MANY_RUNS, "aelight.sweep.command", "run",
                     "a grid or search from a YAML spec, on every device (Optuna):\n"
                     "aelight sweep configs/sweeps/variants.yaml --data.data_dir data/", uses_torch=False),
}  # fmt: skip
APPLICATIONS = [name for name, command in COMMANDS.items() if command.group == APPLICATION]


def overview() -> str:
    """What ``aelight --help`` prints: every command of the table, one line each, by group."""
    lines = ["usage: aelight COMMAND [OPTIONS]", "", "Autoencoder experiments on MNIST with PyTorch Lightning."]
    for group in dict.fromkeys(command.group for command in COMMANDS.values()):
        lines += ["", group]
        for name, command in COMMANDS.items():
            if command.group == group:
                first, *more = command.summary.splitlines()
                lines += [f"  {name:<10}{first}", *(f"  {'':<10}{line}" for line in more)]
    lines += ["", "`aelight COMMAND --help` lists a command's options and what it writes."]
    return "\n".join(lines)


def main(args: Optional[list] = None) -> None:
    """``aelight COMMAND ...``: runs the command's row of ``COMMANDS``."""
    quiet_library_notices()
    if os.environ.get(PARENT_ENV):  # a worker or run of aelight sweep stops with the sweep
        stop_with_parent(int(os.environ[PARENT_ENV]))
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    # an unknown command goes to the training parser, whose error lists the choices
    command = COMMANDS.get(argv[0], COMMANDS["fit"])
    if command.group == MANY_RUNS:  # its results are results.csv and results.md
        with one_line_errors(), ctrl_c_deferred():  # a Ctrl-C while its modules load: exit 130 once loaded
            run = getattr(importlib.import_module(command.module), command.function)
        return run(argv[1:])
    # how the run ended: result.json in its folder (also for a Ctrl-C while torch and Lightning load)
    with one_line_errors(), run_result.recording(argv[0], argv):
        with ctrl_c_deferred():  # until the libraries are loaded: one half-imported fails with its own error
            if command.uses_torch:  # a sweep's own processes train nothing (its trials call this)
                skip_repeated_gpu_probe()
            run = getattr(importlib.import_module(command.module), command.function)
        if command.group == TRAINING:  # None: LightningCLI reads the command line itself
            run(None if args is None else argv)
        else:
            run(argv[1:])


if __name__ == "__main__":
    main()
