"""Dimensionality reduction and feature extraction with a trained encoder.

``aelight reduce``: encode the test set; a 5-nearest-neighbour classifier fitted on the 60,000
training codes scores the codes; a scatter plot coloured by digit for a 2-D code; the TensorBoard
embedding projector (with image sprites) for any code size.

``aelight features``: freeze the encoder, fit a multinomial logistic regression on the training
codes, report test accuracy. With several ``--C``, each is fitted on the training split's codes and
scored on the validation split's; the best is refitted on all 60,000 and tested once.

What they are measured against, through the same protocol and on the same images (raw, or
deskewed with ``--data.deskew true``): ``reduce --baseline umap|tsne|pca`` and ``features
--baseline pixels|pca`` (``aelight.apps.baselines``), and ``features --untrained``, the checkpoint's
network at the initial weights its run drew.

    aelight reduce --ckpt_path lightning_logs/ae_2d/version_0/checkpoints/best.ckpt --data.data_dir data/
    aelight reduce --baseline umap --data.deskew true --data.data_dir data/
    aelight features --ckpt_path lightning_logs/sparse_features/version_0/checkpoints/best.ckpt --data.data_dir data/
    aelight features --ckpt_path lightning_logs/sparse_features/version_0/checkpoints/best.ckpt --untrained
"""

import time
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

from aelight.apps import baselines, common
from aelight.apps.code_figures import confusion, projector, scatter
from aelight.apps.probes import chosen_C, knn_accuracy, logistic_predictions
from aelight.arg_types import number

ENCODE_BATCH = 250  # images encoded at once: a wide convolutional encoder's full-size maps take GBs for 2,000


class Codes(NamedTuple):
    """A trained encoder's codes: of the 60,000 training images (the validation split's last, its
    ``val_count`` rows) and of the test images."""

    model: torch.nn.Module
    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    test_images: torch.Tensor
    val_count: int
    class_names: list[str]
    inputs: str  # which pixels they came from, raw or deskewed


def codes(args, baseline: Optional[Callable] = None) -> Codes:
    """The codes of the command's checkpoint (``--untrained``: its network as initialised), or,
    with ``baseline(train_rows, test_rows, val_count)``, of that baseline on the MNIST images the
    data options give (no model)."""
    if baseline is not None:
        dm = common.mnist_data(args.data_dir, deskew=bool(args.deskew), val_size=args.val_size)
        train_x, train_y = common.full_training_set(dm, "cpu")
        test_x, test_y = common.images_and_labels(dm, "test", "cpu")
        val_count = len(dm.split_tensors("val")[1])
        train_c, test_c = baseline(train_x.flatten(1).numpy(), test_x.flatten(1).numpy(), val_count)
        inputs = "deskewed" if args.deskew else "raw"
        return Codes(None, train_c, train_y.numpy(), test_c, test_y.numpy(), test_x, val_count, dm.class_names, inputs)
    if getattr(args, "untrained", False):
        model, trained, _ = common.load_untrained(args.ckpt_path, args.device)
    else:
        model, trained = common.load_run(args.ckpt_path, args.device)
    dm = common.run_data(trained, args.data_dir, args.root, args.deskew, val_size=args.val_size)
    train_x, train_y = common.full_training_set(dm, args.device)
    test_x, test_y = common.images_and_labels(dm, "test", args.device)
    return Codes(
        model,
        common.batched(model.encode, train_x, ENCODE_BATCH).float().cpu().numpy(),
        train_y.cpu().numpy(),
        common.batched(model.encode, test_x, ENCODE_BATCH).float().cpu().numpy(),
        test_y.cpu().numpy(),
        test_x,
        len(dm.split_tensors("val")[1]),
        dm.class_names,
        pixels_read(model, trained),
    )


def check_source(args) -> None:
    """A checkpoint or a baseline, not both, and ``--untrained`` only of a checkpoint."""
    if args.baseline and args.ckpt_path:
        raise common.AelightError("--baseline learns no network: give it or --ckpt_path, not both")
    if not args.baseline and not args.ckpt_path:
        raise common.AelightError("give --ckpt_path (a checkpoint of `aelight fit`) or --baseline")
    if getattr(args, "untrained", False) and not args.ckpt_path:
        raise common.AelightError("--untrained re-draws a checkpoint's network: give --ckpt_path")


def pixels_read(model, trained: dict) -> str:
    """Which pixels a checkpoint's model reads, for the report: deskewed (by its run's data, or by a
    network that deskews its input itself, ``aelight.components.Deskewed``) or raw."""
    from aelight.components.deskew import Deskewed

    deskews = trained.get("deskew") or any(isinstance(m, Deskewed) for m in model.modules())
    return "deskewed" if deskews else "raw"


def run_reduce(args) -> dict:
    check_source(args)
    baseline, start = None, time.perf_counter()
    if args.baseline:  # the map fitted on every training image
        baseline = baselines.map_baseline(args.baseline, args.seed_everything, args.components or 2)
    elif args.components is not None:
        raise common.AelightError("--components sets a baseline's size; a checkpoint's code has its own")
    model, train_c, train_y, test_c, test_y, test_x, val_count, _, pixels = codes(args, baseline)
    report = {
        "checkpoint": args.ckpt_path,
        "model": type(model).__name__ if model is not None else None,
        **({"baseline": args.baseline, "seed": args.seed_everything} if args.baseline else {}),
        "inputs": pixels,
        "code_size": int(test_c.shape[1]),
        # for choosing between models: fitted on the training split's codes, scored on the validation split's
        "knn5_val_accuracy": knn_accuracy(
            train_c[:-val_count], train_y[:-val_count], train_c[-val_count:], train_y[-val_count:]
        ),
        "knn5_test_accuracy": knn_accuracy(train_c, train_y, test_c, test_y),
        "seconds": time.perf_counter() - start,
        "device": common.device_name(args.device),
    }
    folder = args.report_folder
    figs = {}
    if test_c.shape[1] == 2:
        figs["scatter"] = scatter(test_c, test_y, report["knn5_test_accuracy"])
    common.write_report(folder, report, figs)
    if model is None:  # a baseline has no reconstructions for the projector's error column
        return report
    # a 2-D code shows every test image, as the scatter plot does; other codes a sample
    n = args.projector_images or (len(test_c) if test_c.shape[1] == 2 else 2000)
    errors = common.batched(lambda x: (model.reconstruct(x) - x).pow(2).flatten(1).mean(1), test_x[:n])
    projector(folder, test_c[:n], test_y[:n], test_x[:n], errors.float().cpu().numpy())
    return report


def run_features(args) -> dict:
    check_source(args)
    baseline = None
    if args.baseline:  # fitted on the training split only
        baseline = baselines.code_baseline(args.baseline, args.components, args.seed_everything)
    elif args.components is not None:
        raise common.AelightError("--components sets --baseline pca's size; a checkpoint's code has its own")
    model, train_c, train_y, test_c, test_y, _, val_count, names, pixels = codes(args, baseline)
    if len(set(train_y.tolist())) < 2:
        raise common.AelightError(
            f"{args.ckpt_path}: its run's images have one class ({names[0]}); aelight features fits a classifier "
            "of the codes, which needs images of two classes or more (class folders)"
        )
    start = time.perf_counter()
    C, validation = args.C[0], {}
    if len(args.C) > 1:
        C, validation = chosen_C(train_c, train_y, val_count, args.C, args.max_iter)
    predicted = logistic_predictions(train_c, train_y, test_c, args.max_iter, C)
    accuracy = float((predicted == test_y).mean())
    report = {
        "checkpoint": args.ckpt_path,
        "model": type(model).__name__ if model is not None else None,
        **({"baseline": args.baseline} if args.baseline else {}),
        "untrained": args.untrained,
        "inputs": pixels,
        "code_size": int(test_c.shape[1]),
        "C": C,
        **({"validation_accuracy": {str(c): a for c, a in validation.items()}} if validation else {}),
        "logistic_regression_test_accuracy": accuracy,
        "fit_seconds": time.perf_counter() - start,
        "device": common.device_name(args.device),
    }
    figures = {"confusion": confusion(test_y, predicted, accuracy, names)}
    common.write_report(args.report_folder, report, figures)
    return report


def baseline_options(parser, choices: tuple, what: str, components: str) -> None:
    """``--ckpt_path`` (or a baseline instead), ``--baseline`` and its ``--components``."""
    parser.add_argument(
        "--ckpt_path", default=None, help="a checkpoint written by `aelight fit` (best.ckpt or last.ckpt)"
    )
    parser.add_argument("--baseline", choices=choices, default=None, help=what)
    parser.add_argument("--components", type=number(int, minimum=1), default=None, help=components)
    parser.add_argument("--seed_everything", type=int, default=42, help="a baseline's random state")


def report_name(command: str) -> Callable:
    """The report folder's name: the command's, with the baseline's or ``untrained`` after it, so
    that a baseline's report never replaces the trained model's."""

    def name(args) -> str:
        kind = args.baseline or ("untrained" if getattr(args, "untrained", False) else None)
        return f"{command}_{kind}" if kind else command

    return name


def reduce_parser():
    parser = common.application_parser(
        "reduce",
        "Dimensionality reduction: encodes the test set with a trained model and scores the codes with a\n"
        "5-nearest-neighbour classifier fitted on the 60,000 training codes. --baseline umap|tsne|pca\n"
        "instead fits that map on the 60,000 training images (raw, or --data.deskew true), maps the test\n"
        "images with it and scores them the same way (umap and tsne: pip install 'aelight[baselines]').",
        "report.json (5-NN test accuracy; 5-NN validation accuracy, fitted on the training split's codes, for\n"
        "choosing between models; code size), scatter.png (test codes coloured by digit, 2-D codes\n"
        "only) and the TensorBoard projector's files (test codes with digit label, reconstruction error\n"
        "and image sprites) into\n"
        "<run>/apps/reduce/ (a baseline: lightning_logs/apps/reduce_<baseline>/; or --out DIR); view them with\n"
        "`tensorboard --logdir <run>`.",
        checkpoint=False,
    )
    baseline_options(
        parser,
        baselines.MAPS,
        "fit this map on the training images instead of reading a checkpoint: umap (umap-learn, 15 neighbours, "
        "min_dist 0.1), tsne (openTSNE, perplexity 30) or pca",
        "the baseline map's dimensions (default 2)",
    )

    parser.add_argument(
        "--projector_images",
        type=number(int, minimum=1),
        default=None,
        help="test images shown in the projector (default: all for a 2-D code, else 2000)",
    )
    return parser


def features_parser():
    parser = common.application_parser(
        "features",
        "Feature extraction: freezes the trained encoder, fits a multinomial logistic regression on the\n"
        "training codes and reports its test accuracy. What it is measured against, by the same probe:\n"
        "--untrained (the checkpoint's network at the initial weights its run drew from its seed) and\n"
        "--baseline pixels|pca (the images themselves, or --components N of their principal components\n"
        "fitted on the training split; raw, or --data.deskew true).",
        "report.json (test accuracy, the C used and, with several, each one's validation accuracy; fit\n"
        "time) and confusion.png (the test errors by true and predicted digit) into <run>/apps/features/\n"
        "(--untrained: <run>/apps/features_untrained/; a baseline: lightning_logs/apps/features_<baseline>/;\n"
        "or --out DIR), and the figure to TensorBoard.",
        checkpoint=False,
    )
    baseline_options(
        parser,
        baselines.CODES,
        "probe codes of no network instead of a checkpoint's: pixels, or pca (with --components N)",
        "--baseline pca's code size",
    )
    parser.add_argument(
        "--untrained", action="store_true", help="probe the checkpoint's network at its initial weights, untrained"
    )
    parser.add_argument("--max_iter", type=number(int, minimum=1), default=1000, help="iterations of the lbfgs solver")
    parser.add_argument(
        "--C",
        type=number(float, above=0),
        nargs="+",
        default=[1.0],
        help="inverse regularisation strength of the logistic regression (smaller: stronger); several "
        "values: each scored on the validation split, the best refitted on all training images",
    )
    return parser


def parser(command: str):
    """The parser of ``aelight reduce`` or ``aelight features`` (a sweep checks its trials' options with it)."""
    return {"reduce": reduce_parser, "features": features_parser}[command]()


def main_reduce(argv=None) -> None:
    common.run_main(run_reduce, reduce_parser(), argv, report=report_name("reduce"))


def main_features(argv=None) -> None:
    common.run_main(run_features, features_parser(), argv, report=report_name("features"))
