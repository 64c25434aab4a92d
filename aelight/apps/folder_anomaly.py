"""Anomaly detection on a folder of your own images in the anomaly layout (MVTec AD's):
``train/good/`` to train on, ``test/good/`` and ``test/<defect>/`` to score.

One run: the model trains on ``train/good`` (less a seeded validation share, normal images only),
the threshold is a percentile of the validation images' scores (never of a test image), and every
image under ``test/`` is scored once. ``report.json`` has AUROC, F1, precision and recall at the
threshold, and per defect type its AUROC against the good test images and its recall;
``scores.csv`` has ``path,label,score,anomalous`` for every test image.

    aelight anomaly --config configs/folder_anomaly.yaml --data.root DIR [any aelight fit option]
"""

import csv
import io
import time

import torch
from torchmetrics.functional.classification import binary_auroc, binary_f1_score, binary_precision, binary_recall

from aelight import safe_files
from aelight.apps import common
from aelight.apps.scorers import baseline_scorer
from aelight.data.folder import NORMAL, ImageFolderDataModule
from aelight.errors import DataError
from aelight.run import api
from aelight.run.recording import log_to_run

SCORES_HEADER = ("path", "label", "score", "anomalous")


def folder_options(args, *options: str) -> list[str]:
    """The ``aelight fit`` options of the folder's run: the command's configs and fit options."""
    return [
        *api.arguments(args.config, []),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *args.override,
        *options,
    ]


def log_anomaly_figures(trainer, result: dict) -> None:
    """A detector's AUROC, F1, precision and recall into the run it trained, so TensorBoard's
    HParams compares runs (a one-class sweep's digits and trials) by them."""
    figures = ("auroc", "f1", "precision", "recall")
    log_to_run(trainer, {f"anomaly/{k}": result[k] for k in figures if result[k] is not None})


def checked_layout(dm) -> ImageFolderDataModule:
    if not isinstance(dm, ImageFolderDataModule) or dm.layout.kind != "anomaly":
        raise DataError(
            f"aelight anomaly on a folder needs the anomaly layout: {getattr(dm, 'root', 'data.root')} must hold "
            f"train/{NORMAL}/ (normal images to train on), test/{NORMAL}/ and test/<defect>/ folders"
        )
    if "test" not in dm.layout.files:
        raise DataError(
            f"{dm.root}: no test/ folder; aelight anomaly scores the images of test/{NORMAL}/ and test/<defect>/"
        )
    return dm


def evaluate(model, dm: ImageFolderDataModule, device: str, percentile: float) -> tuple[dict, torch.Tensor]:
    """The report's figures and every test image's score; the threshold from validation only."""
    train = common.images_and_labels(dm, "train", device)[0]
    val = common.images_and_labels(dm, "val", device)[0]
    test, labels = common.images_and_labels(dm, "test", device)
    model.fit_scorer(train, val)
    torch.manual_seed(0)  # the VAE's score draws posterior samples
    scores = common.batched(model.anomaly_score, test, 256).float().cpu()
    val_scores = common.batched(model.anomaly_score, val, 256).float().cpu()
    labels = labels.cpu()
    threshold = torch.quantile(val_scores, percentile / 100).item()
    anomalous, decided = (labels != 0).int(), (scores > threshold).int()
    good = labels == 0
    result = {
        "threshold": threshold,
        "normal_val_images": len(val),
        "test_images": len(test),
        "auroc": binary_auroc(scores, anomalous).item() if 0 < anomalous.sum() < len(anomalous) else None,
        "precision": binary_precision(decided, anomalous).item(),
        "recall": binary_recall(decided, anomalous).item(),
        "f1": binary_f1_score(decided, anomalous).item(),
        NORMAL: {"images": int(good.sum()), "flagged": decided[good].float().mean().item()},
        "defects": {},
    }
    for label, name in enumerate(dm.class_names[1:], start=1):
        mine = labels == label
        if not mine.any():
            continue
        pair = good | mine
        result["defects"][name] = {
            "images": int(mine.sum()),
            "auroc": binary_auroc(scores[pair], anomalous[pair]).item(),
            "recall": decided[mine].float().mean().item(),
        }
    return result, scores


def scores_csv(files: list[str], names: list[str], labels: list[int], scores: torch.Tensor, threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for path, label, score in zip(files, labels, scores.tolist()):
        writer.writerow([path, names[label], repr(score), int(score > threshold)])
    return buffer.getvalue()


def histograms(report: dict, scores: torch.Tensor, labels: list[int], names: list[str]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = torch.tensor(labels)
    top = torch.quantile(scores, 0.99).item() or 1.0
    bins = torch.linspace(0, top, 40).tolist()
    for label, name in enumerate(names):
        if (labels == label).any():
            ax.hist(scores[labels == label].clamp(max=top).numpy(), bins=bins, alpha=0.5, density=True, label=name)
    ax.axvline(report["threshold"], color="k", lw=0.8)
    auroc = report["auroc"]
    ax.set_title(f"{report['score']}: AUROC {auroc:.4f}" if auroc is not None else report["score"], fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return {"score_histograms": fig}


def run(args) -> dict:
    """The folder protocol of ``aelight anomaly`` (its options: ``args``)."""
    if args.digits is not None:
        raise common.AelightError(
            "--digits applies to MNIST's one-class protocol; a folder's normal images are train/good/"
        )
    if args.untrained:
        raise common.AelightError("--untrained applies to MNIST's one-class protocol, not to a folder of images")
    if args.baseline:
        dm = checked_layout(api.prepared(folder_options(args, "--trainer.logger=false")).datamodule)
        dm.prepare_data()
        dm.setup("fit")
        model, best, seconds = baseline_scorer(args.baseline, args.distance, args.k), None, 0.0
    else:
        start = time.perf_counter()
        trained = api.train(folder_options(args))
        seconds = time.perf_counter() - start
        dm = checked_layout(trained.datamodule)
        best, model = trained.result.checkpoints["best"], trained.best_model(args.device)
    result, scores = evaluate(model, dm, args.device, args.percentile)
    if not args.baseline:
        log_anomaly_figures(trained.trainer, result)
    report = {
        "config": args.config,
        "options": args.override,
        "baseline": args.baseline,
        "score": model.anomaly_score_name,
        "percentile": args.percentile,
        "root": dm.root,
        "image_shape": list(dm.image_shape),
        "train_images": len(dm.split_files("train")),
        **result,
        "checkpoint": best,
        "train_seconds": seconds,
        "device": common.device_name(args.device),
    }
    files, labels = dm.split_files("test"), dm.layout.labels["test"]
    csv_text = scores_csv(files, dm.class_names, labels, scores, result["threshold"])
    safe_files.write_text(args.report_folder / "scores.csv", csv_text, what="scores")
    common.write_report(args.report_folder, report, histograms(report, scores, labels, dm.class_names))
    return report
