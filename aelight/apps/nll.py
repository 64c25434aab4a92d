"""Test negative log-likelihood of a VAE on binarized MNIST (fixed, seeded binarisation of the test
set), by importance sampling with the encoder as proposal: -log (1/k) sum_i p(x, z_i) / q(z_i | x).

    aelight nll --ckpt_path lightning_logs/vae_binarized/version_0/checkpoints/best.ckpt --data.data_dir data/
"""

import time

import torch

from aelight.apps import common
from aelight.arg_types import number


def run(args) -> dict:
    model, trained = common.load_run(args.ckpt_path, args.device)
    if not hasattr(model, "log_likelihood"):
        raise common.AelightError(f"{args.ckpt_path} holds a {type(model).__name__}, not a VAE")
    if common.is_folder_run(trained):
        raise common.AelightError(
            f"{args.ckpt_path}: aelight nll measures binarized MNIST's test set; this run read a folder of images"
        )
    dm = common.run_data(trained, args.data_dir, deskew=args.deskew, val_size=args.val_size, binarize=True)
    x, _ = common.images_and_labels(dm, "test", args.device)
    x = x[: args.limit] if args.limit else x
    torch.manual_seed(0)
    start = time.perf_counter()
    log_px = torch.cat([model.log_likelihood(b, args.samples, args.chunk) for b in x.split(args.batch_size)])
    seconds = time.perf_counter() - start
    minus_elbo = torch.cat([-model.log_weights(b, 1).squeeze(0) for b in x.split(args.batch_size)])
    report = {
        "checkpoint": args.ckpt_path,
        "importance_samples": args.samples,
        "test_images": len(x),
        "test_nll_nats": -log_px.mean().item(),
        "test_minus_elbo_nats": minus_elbo.mean().item(),
        "seconds": seconds,
        "device": common.device_name(args.device),
    }
    common.write_report(args.report_folder, report, {})
    return report


def main(argv=None) -> None:
    parser = common.application_parser(
        "nll",
        "Test negative log-likelihood of a VAE on binarized MNIST by importance sampling (k samples per\n"
        "image, the encoder as proposal), beside its ELBO.",
        "report.json (NLL and -ELBO in nats, samples, seconds) into <run>/apps/nll/ (or --out DIR).",
    )
    parser.add_argument("--samples", type=number(int, minimum=1), default=5000, help="importance samples per image (k)")
    parser.add_argument("--chunk", type=number(int, minimum=1), default=500, help="samples per decoder pass (memory)")
    parser.add_argument("--batch_size", type=number(int, minimum=1), default=100, help="test images per pass")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N test images (0: all)")
    common.run_main(run, parser, argv, report="nll")
