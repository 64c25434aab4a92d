"""The figures of ``aelight reduce`` and ``aelight features``: the codes' scatter plot, TensorBoard's
embedding projector, the probe's confusion matrix."""

import numpy as np
import torch


def scatter(codes_2d: np.ndarray, labels: np.ndarray, accuracy: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5))
    points = ax.scatter(codes_2d[:, 0], codes_2d[:, 1], c=labels, cmap="tab10", s=2, alpha=0.7)
    fig.colorbar(points, ax=ax, ticks=sorted(set(labels.tolist())))
    ax.set_title(f"test codes by label (5-NN accuracy {accuracy:.1%})")
    return fig


def projector(folder, test_codes, labels, images, errors) -> None:
    """The TensorBoard embedding projector: codes with their digit label and reconstruction error
    (per-image MSE; colour or label points by either), and image sprites."""
    from torch.utils.tensorboard import SummaryWriter

    metadata = [[str(int(label)), f"{error:.5f}"] for label, error in zip(labels, errors)]
    with SummaryWriter(str(folder)) as writer:
        writer.add_embedding(
            torch.from_numpy(test_codes),
            metadata=metadata,
            metadata_header=["label", "recon_error"],
            label_img=images.cpu(),
            tag="test_codes",
        )


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """``counts[true, predicted]``."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predicted, labels=range(classes))


def confusion(labels: np.ndarray, predicted: np.ndarray, accuracy: float, names: list[str]):
    """The test confusion matrix, errors only (the diagonal is blanked so that the few errors show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion_counts(labels, predicted, len(names))
    errors = counts.astype(float)
    np.fill_diagonal(errors, np.nan)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(errors, cmap="Reds")
    for (i, j), n in np.ndenumerate(counts):
        if i != j and n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7)
    ticks = range(len(names))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class")
    ax.set_xticklabels(names, fontsize=6, rotation=90)
    ax.set_yticklabels(names, fontsize=6)
    ax.set_title(f"test errors of the linear classifier ({accuracy:.2%} correct)")
    return fig
