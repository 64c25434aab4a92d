"""Denoising: PSNR and SSIM of the noisy input, the denoising autoencoder's output and the best
classical filter (Gaussian blur or median, its setting tuned on validation data), on the test set.

    aelight denoise --ckpt_path lightning_logs/denoising/version_0/checkpoints/best.ckpt --data.data_dir data/

PSNR is per image, averaged over images, in dB; identical images give an infinite PSNR.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.transforms.functional import gaussian_blur

from aelight.apps import common
from aelight.components.corruption import corrupt

CORRUPTIONS = {"gaussian_0.25": ("gaussian", 0.25), "gaussian_0.5": ("gaussian", 0.5), "masking_0.5": ("masking", 0.5)}
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
MEDIAN_SIZES = (3, 5, 7)


def psnr(pred: Tensor, target: Tensor) -> float:
    return peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3)).item()


def ssim(pred: Tensor, target: Tensor) -> float:
    return structural_similarity_index_measure(pred, target, data_range=1.0).item()


def median_filter(x: Tensor, size: int) -> Tensor:
    pad = size // 2
    patches = F.pad(x, (pad, pad, pad, pad), mode="reflect").unfold(2, size, 1).unfold(3, size, 1)
    return patches.reshape(*x.shape, size * size).median(dim=-1).values


def classical_filters() -> dict:
    filters = {}
    for sigma in GAUSSIAN_SIGMAS:
        size = 2 * math.ceil(3 * sigma) + 1
        filters[f"gaussian_blur sigma={sigma}"] = lambda x, s=sigma, k=size: gaussian_blur(x, [k, k], [s, s])
    for size in MEDIAN_SIZES:
        filters[f"median {size}x{size}"] = lambda x, k=size: median_filter(x, k)
    return filters


def noisy_version(x: Tensor, kind: str, level: float, seed: int) -> Tensor:
    return corrupt(x, kind, level, torch.Generator(x.device).manual_seed(seed))


def scores(pred: Tensor, target: Tensor) -> dict:
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}


def evaluate(args) -> dict:
    model, trained = common.load_run(args.ckpt_path, args.device)
    dm = common.run_data(trained, args.data_dir, args.root, args.deskew, val_size=args.val_size)
    val, _ = common.images_and_labels(dm, "val", args.device)
    test, _ = common.images_and_labels(dm, "test", args.device)
    filters = classical_filters()
    report = {"checkpoint": args.ckpt_path, "model": type(model).__name__, "device": common.device_name(args.device)}
    examples = {}
    for name, (kind, level) in CORRUPTIONS.items():
        noisy_val = noisy_version(val, kind, level, seed=1)
        best = max(filters, key=lambda f: psnr(common.batched(filters[f], noisy_val), val))
        noisy = noisy_version(test, kind, level, seed=2)
        denoised = common.batched(model.reconstruct, noisy).float()
        filtered = common.batched(filters[best], noisy)
        report[name] = {
            "noisy": scores(noisy, test),
            "autoencoder": scores(denoised, test),
            "best_filter": {"filter": best, **scores(filtered, test)},
        }
        report[name]["autoencoder_minus_filter_psnr_db"] = (
            report[name]["autoencoder"]["psnr"] - report[name]["best_filter"]["psnr"]
        )
        examples[name] = (test[:8], noisy[:8], denoised[:8], filtered[:8], best)
    return report, examples


def figures(report: dict, examples: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    for name, (clean, noisy, denoised, filtered, best) in examples.items():
        fig, axes = plt.subplots(4, len(clean), figsize=(len(clean) * 1.1, 4.8))
        for row, (title, imgs) in enumerate(
            [("clean", clean), ("noisy", noisy), ("autoencoder", denoised), (best, filtered)]
        ):
            for col in range(len(clean)):
                ax = axes[row, col]
                image = imgs[col].clamp(0, 1).permute(1, 2, 0).cpu()  # (H, W, C)
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
            axes[row, 0].set_ylabel(title, fontsize=7)
        r = report[name]
        fig.suptitle(
            f"{name}: PSNR noisy {r['noisy']['psnr']:.1f} dB, AE {r['autoencoder']['psnr']:.1f} dB, "
            f"filter {r['best_filter']['psnr']:.1f} dB",
            fontsize=8,
        )
        figs[f"examples_{name}"] = fig
    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(examples)
    for i, key in enumerate(["noisy", "best_filter", "autoencoder"]):
        ax.bar(
            [j + 0.27 * (i - 1) for j in range(len(names))], [report[n][key]["psnr"] for n in names], 0.27, label=key
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("PSNR (dB)")
    ax.legend()
    figs["psnr"] = fig
    return figs


def run(args) -> dict:
    report, examples = evaluate(args)
    common.write_report(args.report_folder, report, figures(report, examples))
    return report


def main(argv=None) -> None:
    parser = common.application_parser(
        "denoise",
        "Denoising: PSNR and SSIM of the noisy test images, of the model's output and of the best classical\n"
        "filter (Gaussian blur or median, tuned on validation data) for Gaussian noise 0.25 and 0.5 and\n"
        "50% masking.",
        "report.json (PSNR/SSIM per corruption and method), examples_<corruption>.png (noisy, filtered,\n"
        "model output, clean rows) and psnr.png into <run>/apps/denoise/ (or --out DIR), and the figures\n"
        "to TensorBoard.",
    )
    common.run_main(run, parser, argv, report="denoise")
