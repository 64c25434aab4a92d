"""Side-by-side benchmark: the reference PyTorch training loop verbatim vs aelight's ``fit`` of the same model.

Both run in ONE process on one device, alternating epoch by epoch (the reference loop's epoch runs between
two aelight epochs, outside aelight's timed window), so machine noise hits both alike.
Printed per epoch: time, samples/s, the ratio aelight/reference and the test MSE of each in pixel space.

    python scripts/bench.py --data-dir data/ --epochs 3            # configs/ae.yaml, CPU or GPU
    python scripts/bench.py --data-dir data/ --epochs 3 --json     # machine-readable

The reference loop normalises pixels to [-1, 1] in front of a sigmoid decoder; its test MSE is reported in
pixel space ([0, 1]), i.e. its normalised-space MSE divided by 4.
"""

import argparse
import json
import os
import sys
import time

import lightning as L
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aelight.cli import build_cli  # noqa: E402
from aelight.data.pixels import to_float_images  # noqa: E402
from aelight.training.engine import TrainingEngine  # noqa: E402


# --- the reference PyTorch code, verbatim except that paths and device are parameters ------------------------
class Autoencoder(nn.Module):
    def __init__(self, input_size=784, latent_size=32):
        super(Autoencoder, self).__init__()
        self.encoder = nn.Sequential(nn.Linear(input_size, latent_size), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(latent_size, input_size), nn.Sigmoid())

    def forward(self, x):
        x = self.encoder(x)
        x = self.decoder(x)
        return x


class ReferenceLoop:
    def __init__(self, data_dir: str, device: torch.device):
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        train_dataset = datasets.MNIST(root=data_dir, train=True, download=False, transform=transform)
        self.train_loader = DataLoader(train_dataset, batch_size=128, shuffle=True)
        self.samples = len(train_dataset)
        self.device = device
        self.model = Autoencoder().to(device)
        self.criterion = nn.MSELoss()
        self.optimizer = optim.Adam(self.model.parameters(), lr=0.001)

    def epoch(self) -> float:
        device, model, criterion, optimizer = self.device, self.model, self.criterion, self.optimizer
        model.train()
        train_loss = 0
        for batch_idx, (data, _) in enumerate(self.train_loader):
            data = data.view(data.size(0), -1).to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, data)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
        return train_loss / len(self.train_loader)


# --- measurement ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def test_mse(reconstruct, test_images: torch.Tensor) -> float:
    """Pixel-space MSE on the test set; ``reconstruct`` maps [0, 1] pixels to [0, 1] pixels."""
    errors = [((reconstruct(x) - x) ** 2).mean(dim=(1, 2, 3)) for x in test_images.split(1000)]
    return torch.cat(errors).mean().item()


class Interleave(L.Callback):
    """Times aelight's training epochs and, after each, runs and times one epoch of the reference loop."""

    def __init__(self, reference: ReferenceLoop, test_images: torch.Tensor, device: torch.device, report):
        self.reference, self.test_images, self.device, self.report = reference, test_images, device, report

    def on_train_epoch_start(self, trainer, pl_module):
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        ae_time = time.perf_counter() - self.start
        ae_samples = len(trainer.datamodule.splits["train"])
        pl_module.eval()
        ae_mse = test_mse(pl_module.reconstruct, self.test_images)
        pl_module.train()

        sync(self.device)
        start = time.perf_counter()
        self.reference.epoch()
        sync(self.device)
        reference_time = time.perf_counter() - start
        reference_model = self.reference.model.eval()
        reference_mse = test_mse(
            lambda x: (reference_model((x * 2 - 1).flatten(1)).view_as(x) + 1) / 2, self.test_images
        )
        reference_model.train()
        self.report(
            {
                "epoch": trainer.current_epoch + 1,
                "reference_s": reference_time,
                "reference_samples_per_s": self.reference.samples / reference_time,
                "aelight_s": ae_time,
                "aelight_samples_per_s": ae_samples / ae_time,
                "speedup_epoch_time": reference_time / ae_time,
                "speedup_samples_per_s": (ae_samples / ae_time) / (self.reference.samples / reference_time),
                "reference_test_mse": reference_mse,
                "aelight_test_mse": ae_mse,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--precision", default="32-true", help="aelight's trainer precision, e.g. bf16-mixed")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--config", default="configs/ae.yaml", help="aelight's experiment config (the reference model)")
    parser.add_argument("--steps-per-batch", type=int, default=None, help="override the config's steps_per_batch")
    parser.add_argument("--compile-step", action="store_true", help="torch.compile aelight's training step")
    parser.add_argument("--cuda-graph", action="store_true", help="replay aelight's training step as a CUDA graph")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_epochs=args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    device = trainer.strategy.root_device
    overrides = [f"--engine.steps_per_batch={args.steps_per_batch}"] if args.steps_per_batch else []
    overrides += ["--engine.compile_step=true"] if args.compile_step else []
    overrides += ["--engine.cuda_graph=true"] if args.cuda_graph else []
    sys.argv = sys.argv[:1]  # the CLI reads only the arguments below (it warns when both are given)
    cli = build_cli(
        [
            f"--config={args.config}",
            f"--data.data_dir={args.data_dir}",
            "--data.download=false",
            f"--data.val_size={args.val_size}",
            "--trainer.logger=false",  # the model and data of the config only: this script's trainer runs them
            *overrides,
        ],
        run=False,
    )
    model, dm = cli.model, cli.datamodule
    (engine,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TrainingEngine)]  # the config's engine
    trainer.callbacks.append(engine)
    dm.setup("fit")
    test_images = to_float_images(dm.split_tensors("test")[0].to(device))
    rows = []

    def report(row):
        rows.append(row)
        if not args.json:
            print(
                f"epoch {row['epoch']}: reference {row['reference_s']:.2f} s "
                f"({row['reference_samples_per_s'] / 1e3:.1f}k/s, "
                f"test MSE {row['reference_test_mse']:.4f}) | aelight {row['aelight_s']:.3f} s "
                f"({row['aelight_samples_per_s'] / 1e3:.1f}k/s, test MSE {row['aelight_test_mse']:.4f}) | "
                f"aelight/reference: {row['speedup_epoch_time']:.1f}x epoch time, "
                f"{row['speedup_samples_per_s']:.1f}x samples/s",
                flush=True,
            )

    reference = ReferenceLoop(args.data_dir, device)
    trainer.callbacks.append(Interleave(reference, test_images, device, report))
    trainer.fit(model, datamodule=dm)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    median = lambda key: sorted(r[key] for r in rows)[len(rows) // 2]  # noqa: E731
    summary = {
        "device": device_name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "precision": args.precision,
        "config": args.config,
        "steps_per_batch": engine.steps_per_batch,
        "compile_step": engine.compile_step,
        "cuda_graph": engine.graphed_step is not None,
        "cuda_graph_replays": engine.graphed_step.replays if engine.graphed_step is not None else 0,
        "epochs": rows,
        "median_speedup_epoch_time": median("speedup_epoch_time"),
        "median_speedup_samples_per_s": median("speedup_samples_per_s"),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{device_name}: median over {len(rows)} epochs, aelight/reference = "
            f"{summary['median_speedup_epoch_time']:.1f}x epoch time, "
            f"{summary['median_speedup_samples_per_s']:.1f}x samples/s"
        )


if __name__ == "__main__":
    main()
