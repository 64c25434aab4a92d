"""Side-by-side benchmark of the training engine's ``channels_last``: optimizer steps of a
convolutional config's networks on real MNIST batches, in the default (NCHW) layout and in the
channels-last one, alternating block by block in one process so machine noise hits both alike.

    python scripts/bench_channels_last.py --data-dir data/                          # configs/apps/conv_dae.yaml
    python scripts/bench_channels_last.py --data-dir data/ --config configs/conv_ae.yaml --device cuda

Prints each layout's median milliseconds per step and their ratio (above 1: channels-last is faster).
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import yaml
from torchvision.datasets import MNIST

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aelight.models.autoencoder import build_network  # noqa: E402


def networks(config: str, layout: torch.memory_format, device: str):
    """The config's encoder and decoder, seeded alike, in ``layout``, and an Adam over both."""
    init = yaml.safe_load(open(config))["model"]["init_args"]
    torch.manual_seed(0)
    nets = torch.nn.Sequential(build_network(init["encoder"]), build_network(init["decoder"]))
    nets = nets.to(device=device, memory_format=layout)
    return nets, torch.optim.Adam(nets.parameters(), 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/")
    parser.add_argument("--config", default="configs/apps/conv_dae.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per layout, alternating")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per block")
    args = parser.parse_args()
    images = MNIST(args.data_dir, train=True, download=False).data[: args.batch_size * args.steps]
    x = (images.float() / 255).unsqueeze(1).to(args.device)
    layouts = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
    runs = {name: networks(args.config, layout, args.device) for name, layout in layouts.items()}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for block in range(args.blocks + 1):  # the first block of each warms up and is not counted
        for name, layout in layouts.items():
            nets, optimizer = runs[name]
            batches = x.contiguous(memory_format=layout).split(args.batch_size)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(torch.sigmoid(nets(batch)), batch).backward()
                optimizer.step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if block:
                times[name].append((time.perf_counter() - start) / len(batches) * 1000)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.config} on {args.device}, batch {args.batch_size}, {torch.get_num_threads()} thread(s)")
    for name, ms in median.items():
        print(f"  {name:<14}{ms:8.1f} ms per step")
    print(f"  channels-last speed-up: {median['NCHW'] / median['channels-last']:.2f}x")


if __name__ == "__main__":
    main()
