"""Times a training step (forward, loss, backward) of the winner-take-all autoencoder three ways, side
by side in one process, for several numbers of maps: ``dense`` (autograd through the full feature maps,
the dense transposed convolution of the sparse maps), ``paint`` (the same maps, the decoder painting
the winners alone: ``ConvMapDecoder.paint``) and ``peaks`` (what ``WTAAE`` does: the encoder's peaks
recomputed from their patches, ``ConvMapEncoder.peaks``, then painted). Prints one JSON object: the
median seconds per step of each and the ratios to ``peaks``.

    python scripts/bench_wta_step.py [--maps 128 1024] [--batch 100] [--repeats 5]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aelight.components import ConvMapDecoder, ConvMapEncoder  # noqa: E402
from aelight.models.wta import lifetime_winners, spatial_winners  # noqa: E402

PATHS = ("dense", "paint", "peaks")


def step(encoder, decoder, x, path: str) -> None:
    values, positions = encoder.peaks(x) if path == "peaks" else spatial_winners(encoder(x))
    values = lifetime_winners(values, 0.05)
    if path == "dense":
        maps = torch.zeros(*values.shape, x.shape[-2] * x.shape[-1]).scatter(2, positions[..., None], values[..., None])
        recon = decoder(maps.view(*values.shape, *x.shape[-2:]))
    else:
        recon = decoder.paint(values, positions, x.shape[-2:])
    F.mse_loss(recon, x).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28)
    results = {"threads": torch.get_num_threads(), "batch": args.batch}
    for maps in args.maps:
        encoder, decoder = ConvMapEncoder(maps, kernel_size=5), ConvMapDecoder(maps, kernel_size=11)
        times = {path: [] for path in PATHS}
        for path in PATHS:  # warm-up
            step(encoder, decoder, x, path)
        for _ in range(args.repeats):  # interleaved, so every path sees the same machine
            for path in PATHS:
                start = time.perf_counter()
                step(encoder, decoder, x, path)
                times[path].append(time.perf_counter() - start)
        median = {path: statistics.median(times[path]) for path in PATHS}
        results[f"maps_{maps}"] = {
            **{f"{path}_s": median[path] for path in PATHS},
            **{f"{path}_over_peaks": median[path] / median["peaks"] for path in ("dense", "paint")},
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
