"""A small MNIST CNN, trained once and cached: the judge of generated digits (its confidence, the
spread of its predicted classes, and its penultimate features for the Fréchet distance)."""

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from aelight.checkpoints import trust
from aelight.checkpoints.io import SafeCheckpointIO, check_weights_fit, weight_shapes
from aelight.safe_files import check_writable


class MNISTClassifier(L.LightningModule):
    def __init__(self, lr: float = 2e-3):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, 10))
        self.val_acc, self.test_acc = MulticlassAccuracy(10, average="micro"), MulticlassAccuracy(10, average="micro")

    def features(self, x: Tensor) -> Tensor:
        """The 128-d penultimate features."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val/accuracy", self.val_acc)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/accuracy", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class PenultimateFeatures(nn.Module):
    """Wraps the classifier for torchmetrics' Fréchet distance (images in [0, 1] in, features out)."""

    def __init__(self, classifier: MNISTClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = 128

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())


def trained_classifier(
    path: str, data_dir: str, device: str, epochs: int = 4, val_size: int = 5000
) -> tuple[MNISTClassifier, float]:
    """The cached classifier at ``path`` (trained there first if missing) and its test accuracy.

    The cache is a checkpoint like any other: loaded weights-only with its class paths checked
    (aelight.checkpoints.trust), written atomically."""
    from aelight.run.run_data import mnist_data as data

    cached = os.path.exists(path)
    if not cached:  # before training: the cache must be writable
        check_writable(os.path.dirname(os.path.abspath(path)), "choose another cache file with --classifier PATH")
    dm = data(data_dir, batch_size=128, eval_batch_size=1000, val_size=val_size)
    trainer = L.Trainer(
        accelerator="gpu" if str(device).startswith("cuda") else "cpu", devices=1, max_epochs=epochs,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        plugins=[SafeCheckpointIO()],
    )  # fmt: skip
    if cached:
        state = trust.load_checkpoint(path)["state_dict"]
        model = MNISTClassifier()  # its one hyperparameter, the learning rate, plays no part here
        check_weights_fit(
            model, weight_shapes(state), f"classifier cache {path}", "aelight's MNIST classifier",
            fix="delete it to train a new one",
        )  # fmt: skip
        model.load_state_dict(state)
    else:
        L.seed_everything(0)
        model = MNISTClassifier()
        trainer.fit(model, datamodule=dm)
        trainer.save_checkpoint(path, weights_only=True)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    return model.eval().to(device), result["test/accuracy"]
