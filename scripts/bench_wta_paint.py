"""Times a training step (forward, loss, backward) of the winner-take-all autoencoder with its decoder
painting the winners alone (``ConvMapDecoder.paint``, what ``WTAAE`` does) against the dense
transposed convolution of the same sparse maps, side by side in one process, for several numbers of
maps; prints one JSON object (median seconds per step of each, and their ratio).

    python scripts/bench_wta_paint.py [--maps 128 1024] [--batch 100] [--repeats 5]
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


def step(encoder, decoder, x, dense: bool) -> None:
    values, positions = spatial_winners(encoder(x))
    values = lifetime_winners(values, 0.05)
    if dense:
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
        times = {"paint": [], "dense": []}
        step(encoder, decoder, x, dense=False)  # warm-up of both paths
        step(encoder, decoder, x, dense=True)
        for _ in range(args.repeats):  # alternating, so both see the same machine
            for dense in (False, True):
                start = time.perf_counter()
                step(encoder, decoder, x, dense)
                times["dense" if dense else "paint"].append(time.perf_counter() - start)
        paint, dense = statistics.median(times["paint"]), statistics.median(times["dense"])
        results[f"maps_{maps}"] = {"paint_s": paint, "dense_s": dense, "dense_over_paint": dense / paint}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
