"""Anomaly detection, one-class protocol: for each digit, train on that digit's training images
only (normal), score all 10,000 test images (anomaly = any other digit) with the model's anomaly
score (reconstruction error; -ELBO for a VAE; relative restoration error for the restoration AE),
and report the AUROC per digit and their mean. A threshold at a percentile of the validation scores
of normal images gives yes/no decisions (precision, recall, F1). ``scores.csv`` holds every test
image's score and decision, so the figures can be recomputed from it.

Two references for what learning adds, on the same inputs (raw pixels, or deskewed ones with
``--data.deskew true``) and the same protocol:

- ``--baseline knn --distance euclidean|cosine --k K`` trains nothing: an image's score is its mean
  distance to its K nearest normal training images, pixel by pixel (``--baseline pixel_nn``, the
  name of earlier releases, is its Euclidean K = 1 case);
- ``--untrained`` scores with the config's own network at its initial weights, drawn from
  ``--seed_everything`` as a fit's would be, and trains nothing.

    aelight anomaly --config configs/anomaly/restoration.yaml --data.data_dir data/ [any aelight fit option]
    aelight anomaly --baseline knn --distance cosine --k 5 --data.data_dir data/
    aelight anomaly --config configs/anomaly/restoration.yaml --untrained --data.data_dir data/

A config or option naming ``aelight.data.ImageFolderDataModule`` runs the folder protocol instead
(``aelight.apps.folder_anomaly``): one run on ``train/good/``, every image of ``test/`` scored.

    aelight anomaly --config configs/folder_anomaly.yaml --data.root DIR
"""

import argparse
import csv
import importlib
import io
import time

import torch
from torchmetrics.functional.classification import binary_auroc, binary_f1_score, binary_precision, binary_recall

from aelight import safe_files
from aelight.apps import common, folder_anomaly
from aelight.apps.scorers import BASELINES, DISTANCES, baseline_scorer
from aelight.arg_types import number
from aelight.data.folder import ImageFolderDataModule
from aelight.run import api

SCORES_HEADER = ("index", "label", "score", "anomalous")


def one_class_options(args, digit: int, *options: str) -> list[str]:
    """The ``aelight fit`` options of the digit's one-class run: the command's configs and fit
    options, the digit's training images only."""
    return [
        *api.arguments(args.config, []),
        "--data.download=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *args.override,  # the user's aelight fit options
        f"--data.classes=[{digit}]",
        *options,
    ]


def untrained_one_class(args, digit: int):
    """The digit's scorer without training and its data (set up), nothing logged: the nearest-
    neighbour baseline, or (``--untrained``) the config's network at the initial weights that
    ``--seed_everything`` draws for a fit."""
    cli = api.prepared(one_class_options(args, digit, "--trainer.logger=false"))
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    if args.baseline:
        return baseline_scorer(args.baseline, args.distance, args.k), dm
    return cli.model.eval().to(args.device), dm


def train_one_class(args, digit: int):
    """The digit's run of ``aelight fit`` (its own run folder and result.json), and its best model
    loaded back as every command loads a checkpoint (trusting the classes the options named)."""
    start = time.perf_counter()
    trained = api.train(one_class_options(args, digit, f"--trainer.logger.init_args.name=anomaly_digit{digit}"))
    seconds = time.perf_counter() - start
    best = trained.result.checkpoints["best"]
    return trained.best_model(args.device), trained.datamodule, best, seconds, trained.trainer


def evaluate_digit(model, dm, digit: int, device: str, percentile: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    test, labels = common.images_and_labels(dm, "test", device)
    val, _ = common.images_and_labels(dm, "val", device)  # normal images only (data.classes)
    model.fit_scorer(common.images_and_labels(dm, "train", device)[0], val)
    torch.manual_seed(0)  # the VAE's score draws posterior samples
    scores = common.batched(model.anomaly_score, test).float()
    val_scores = common.batched(model.anomaly_score, val).float()
    anomalous = (labels != digit).int()
    threshold = torch.quantile(val_scores, percentile / 100).item()
    decided = (scores > threshold).int()
    result = {
        "auroc": binary_auroc(scores, anomalous).item(),
        "threshold": threshold,
        "precision": binary_precision(decided, anomalous).item(),
        "recall": binary_recall(decided, anomalous).item(),
        "f1": binary_f1_score(decided, anomalous).item(),
        "normal_val_images": len(val),
    }
    return result, scores.cpu(), anomalous.cpu()


def folder_data(fit_options: list[str]):
    """The image folder data module (not set up) that ``aelight fit`` with these options would read,
    or None when they name another data module."""
    try:
        config = api.parsed(fit_options).data.as_dict()
    except common.AelightError:  # the run itself then says what is wrong
        return None
    module, _, name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, ImageFolderDataModule)):
        return None
    return cls(**config.get("init_args", {}))


def run(args) -> dict:
    if not args.config and not args.baseline:
        raise common.AelightError(
            "aelight anomaly needs --config (the model to train, e.g. configs/anomaly/restoration.yaml, or "
            "configs/folder_anomaly.yaml for a folder of images) or --baseline knn"
        )
    if args.baseline and args.untrained:
        raise common.AelightError("--untrained scores with the config's network untrained; --baseline with no network")
    if not args.baseline and (args.distance or args.k):
        raise common.AelightError("--distance and --k are the settings of --baseline knn")
    if args.baseline:
        try:
            baseline_scorer(args.baseline, args.distance, args.k)
        except ValueError as err:
            raise common.AelightError(str(err)) from None
    fit_options = [*[f"--config={c}" for c in args.config or []], *args.override]
    probe = folder_data(fit_options)
    if probe is not None:
        folder_anomaly.checked_layout(probe)  # before a run folder is made
        return folder_anomaly.run(args)
    args.digits = list(range(10)) if args.digits is None else args.digits
    bad_digits = [d for d in args.digits if d not in range(10)]
    if bad_digits:
        raise common.AelightError(f"--digits: {bad_digits} are not digits from 0 to 9")
    report = {
        "config": args.config,
        "options": args.override,
        "baseline": args.baseline,
        **({"distance": args.distance or "euclidean", "k": args.k or 1} if args.baseline else {}),
        "untrained": args.untrained,
        "score": None,
        "percentile": args.percentile,
        "digits": {},
    }
    histograms, rows = {}, []
    for digit in args.digits:
        if args.baseline or args.untrained:
            model, dm = untrained_one_class(args, digit)
            best, seconds, trainer = None, 0.0, None
        else:
            model, dm, best, seconds, trainer = train_one_class(args, digit)
        report["score"] = model.anomaly_score_name
        result, scores, anomalous = evaluate_digit(model, dm, digit, args.device, args.percentile)
        if trainer is not None:
            folder_anomaly.log_anomaly_figures(trainer, result)
        report["digits"][str(digit)] = {**result, "checkpoint": best, "train_seconds": seconds}
        histograms[digit] = (scores, anomalous, result["threshold"])
        rows.append((digit, dm.split_tensors("test")[1], scores, scores > result["threshold"]))
        print(f"digit {digit}: AUROC {result['auroc']:.4f}", flush=True)
    aurocs = [d["auroc"] for d in report["digits"].values()]
    report["mean_auroc"] = sum(aurocs) / len(aurocs)
    report["inputs"] = "deskewed" if getattr(dm, "deskew", False) else "raw"
    report["device"] = common.device_name(args.device)
    safe_files.write_text(args.report_folder / "scores.csv", scores_csv(rows), what="scores")
    common.write_report(args.report_folder, report, figures(report, histograms))
    return report


def scores_csv(rows: list) -> str:
    """One line per scored test image: its index in the test set, its label, its score and the
    decision at the threshold (1: anomalous). With several digits, each digit's 10,000 lines in
    turn and a last column ``normal_digit`` saying whose detector scored them."""
    several = len(rows) > 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*SCORES_HEADER, *(["normal_digit"] if several else [])])
    for digit, labels, scores, decided in rows:
        for index, (label, score, flag) in enumerate(zip(labels.tolist(), scores.tolist(), decided.tolist())):
            writer.writerow([index, label, repr(score), int(flag), *([digit] if several else [])])
    return buffer.getvalue()


def figures(report: dict, histograms: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = list(histograms)
    cols = min(5, len(digits))
    rows = (len(digits) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax, digit in zip(axes.flat, digits):
        scores, anomalous, threshold = histograms[digit]
        top = torch.quantile(scores, 0.99).item()
        bins = torch.linspace(0, top, 50).tolist()
        ax.hist(scores[anomalous == 0].clamp(max=top).numpy(), bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(scores[anomalous == 1].clamp(max=top).numpy(), bins=bins, alpha=0.6, density=True, label="anomalous")
        ax.axvline(threshold, color="k", lw=0.8)
        ax.set_title(f"digit {digit}: AUROC {report['digits'][str(digit)]['auroc']:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(digits) :]:
        ax.axis("off")
    fig.suptitle(f"{report['score']}: mean AUROC {report['mean_auroc']:.4f}", fontsize=9)
    fig.tight_layout()
    return {"score_histograms": fig}


def parser() -> argparse.ArgumentParser:
    """``aelight anomaly``'s own options; any other is an ``aelight fit`` option of each digit's run."""
    parser = common.application_parser(
        "anomaly",
        "One-class anomaly detection: for each digit, trains the model of --config on that digit's training\n"
        "images only (an ordinary `aelight fit` run, logged as anomaly_digit<d>), scores the 10,000 test\n"
        "images by reconstruction error (-ELBO for a VAE; any other digit is an anomaly) and reports the\n"
        "AUROC per digit and their mean. Any other option is an `aelight fit` option applied to every\n"
        "digit's run, e.g. --data.data_dir data/ --trainer.max_epochs 20 --model.init_args.lr 3e-4.\n"
        "With a folder of images (--config configs/folder_anomaly.yaml --data.root DIR: train/good/,\n"
        "test/good/, test/<defect>/), one run trains on train/good/, the threshold comes from held-out\n"
        "good images and every image of test/ is scored.",
        "one run folder per digit (<save_dir>/anomaly_digit<d>/version_N/, TensorBoard logs and\n"
        "checkpoints), and report.json (AUROC, threshold, precision, recall, F1 per digit; mean AUROC),\n"
        "scores.csv (index,label,score,anomalous: each test image's score and decision at the threshold;\n"
        "with several digits a last column normal_digit; for a folder path,label,score,anomalous and\n"
        "report.json per defect type too) and score_histograms.png into\n"
        "lightning_logs/apps/anomaly/ (or --out DIR).",
        checkpoint=False,
        data=False,
    )
    parser.add_argument("--config", action="append", help="aelight config(s) of the model to train")
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="score without learning instead: knn, the mean distance to the --k nearest normal training images "
        "(pixel_nn: its Euclidean 1-NN case), on the pixels the data options give (--data.deskew true: deskewed)",
    )
    parser.add_argument(
        "--distance", choices=DISTANCES, default=None, help="--baseline knn's distance (default: euclidean)"
    )
    parser.add_argument(
        "--k", type=number(int, minimum=1), default=None, help="--baseline knn's neighbours (default: 1)"
    )
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="score with --config's network at its initial weights (drawn from --seed_everything), no training",
    )
    parser.add_argument(
        "--digits", type=int, nargs="+", default=None, help="MNIST's normal classes, one run each (default: 0 to 9)"
    )
    parser.add_argument(
        "--percentile",
        type=number(float, minimum=0, maximum=100),
        default=95.0,
        help="threshold: this percentile (0-100) of normal scores",
    )
    return parser


def main(argv=None) -> None:
    common.run_main(run, parser(), argv, forward=True, report="anomaly")
