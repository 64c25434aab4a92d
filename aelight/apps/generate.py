"""Generation: VAE samples from the prior, interpolations through the latent space, the decoded
manifold of a 2-D latent, and their quality judged by an MNIST classifier (≥ 99% test accuracy,
trained once and cached): mean top-class confidence, entropy of the predicted-class histogram
(uniform = log 10 = 2.303 nats) and the Fréchet distance between the classifier's penultimate
features of 10,000 samples and of the 10,000 test images. The baseline is a plain autoencoder's
decoder fed codes drawn from a Gaussian fitted to its training codes.

    aelight generate --ckpt_path lightning_logs/vae/version_0/checkpoints/best.ckpt \\
        --baseline_ckpt_path lightning_logs/ae/version_0/checkpoints/best.ckpt --data.data_dir data/
"""

import math

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from aelight.apps import common
from aelight.apps.classifier import PenultimateFeatures, trained_classifier
from aelight.arg_types import number


@torch.no_grad()
def gaussian_code_sampler(model, train_x: Tensor):
    """Draws codes from a full-covariance Gaussian fitted to the model's training codes."""
    codes = common.batched(model.encode, train_x).double()
    mean, cov = codes.mean(0), torch.cov(codes.T) + 1e-6 * torch.eye(codes.shape[1], device=codes.device)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return lambda n: model.decode(dist.sample((n,)).float())


@torch.no_grad()
def quality(sample_fn, n: int, classifier, test_x: Tensor, device: str) -> tuple[dict, Tensor]:
    fd = FrechetInceptionDistance(feature=PenultimateFeatures(classifier), input_img_size=(1, 28, 28)).to(device)
    fd.update(test_x, real=True)
    samples = torch.cat([sample_fn(min(1000, n - i)).float().reshape(-1, 1, 28, 28) for i in range(0, n, 1000)])
    probs = torch.softmax(common.batched(classifier, samples), dim=1)
    fd.update(samples, real=False)
    hist = torch.bincount(probs.argmax(1), minlength=10).double() / len(probs)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum().item()
    report = {
        "mean_top_class_confidence": probs.max(1).values.mean().item(),
        "predicted_class_entropy_nats": entropy,
        "predicted_class_histogram": hist.tolist(),
        "frechet_distance": fd.compute().item(),
    }
    return report, samples[:64]


@torch.no_grad()
def interpolation(model, a: Tensor, b: Tensor, steps: int = 10) -> Tensor:
    za, zb = model.encode(a[None]), model.encode(b[None])
    t = torch.linspace(0, 1, steps, device=a.device)[:, None]
    return model.decode(za + t * (zb - za))


@torch.no_grad()
def manifold(model, size: int = 20) -> Tensor:
    """Decoded grid of a 2-D latent over the prior's quantiles 0.05..0.95."""
    q = torch.distributions.Normal(0, 1).icdf(torch.linspace(0.05, 0.95, size))
    grid = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2).to(model.device)
    return model.decode(grid)


def run(args) -> dict:
    model, trained = common.load_run(args.ckpt_path, args.device)
    if not callable(getattr(model, "sample", None)):
        raise common.AelightError(
            f"{args.ckpt_path} holds a {type(model).__name__}, not a generative model (use a VAE)"
        )
    baseline = common.load_model(args.baseline_ckpt_path, args.device) if args.baseline_ckpt_path else None
    dm = common.run_data(trained, args.data_dir, args.root, args.deskew, val_size=args.val_size)
    test_x, _ = common.images_and_labels(dm, "test", args.device)
    train_x, _ = common.full_training_set(dm, args.device)
    baseline_samples = None
    if common.is_folder_run(trained):  # the MNIST digit judge does not apply: samples and figures only
        torch.manual_seed(0)
        report = {"checkpoint": args.ckpt_path, "judge": None, "root": dm.root}
        vae_samples = torch.cat([model.sample(min(1000, args.samples - i)) for i in range(0, args.samples, 1000)])
        report["vae"] = {"samples": len(vae_samples), "mean_pixel": vae_samples.float().mean().item()}
        if baseline is not None:
            baseline_samples = gaussian_code_sampler(baseline, train_x)(min(64, args.samples))
        return finish(args, model, report, vae_samples[:64], baseline_samples, test_x)
    classifier, accuracy = trained_classifier(
        args.classifier, args.data_dir, args.device, args.classifier_epochs, args.val_size
    )
    torch.manual_seed(0)
    report = {"checkpoint": args.ckpt_path, "classifier": args.classifier, "classifier_test_accuracy": accuracy}
    report["vae"], vae_samples = quality(model.sample, args.samples, classifier, test_x, args.device)
    test_quality, _ = quality(lambda n: test_x[:n], len(test_x), classifier, test_x, args.device)
    report["test_images_reference"] = {k: v for k, v in test_quality.items() if k != "frechet_distance"}
    if baseline is not None:
        sampler = gaussian_code_sampler(baseline, train_x)
        report["ae_gaussian_codes"], baseline_samples = quality(sampler, args.samples, classifier, test_x, args.device)
        report["baseline_checkpoint"] = args.baseline_ckpt_path
    return finish(args, model, report, vae_samples, baseline_samples, test_x)


def finish(args, model, report: dict, vae_samples: Tensor, baseline_samples, test_x: Tensor) -> dict:
    """The figures (samples, interpolations between test images, the 2-D manifold) and the report."""
    report["samples"] = args.samples
    report["device"] = common.device_name(args.device)
    folder = args.report_folder
    figs = {"vae_samples": grid_figure(vae_samples, "VAE prior samples")}
    if baseline_samples is not None:
        figs["ae_gaussian_code_samples"] = grid_figure(baseline_samples, "AE decoder, Gaussian-fitted codes")
    pairs = [(test_x[i], test_x[j]) for i, j in ((0, 1), (2, 3), (4, 5), (6, 7)) if j < len(test_x)]
    if pairs:
        interpolations = torch.cat([interpolation(model, a, b) for a, b in pairs])
        figs["interpolation"] = grid_figure(interpolations, "interpolations", 10)
    if model.latent_dim == 2:
        figs["manifold"] = grid_figure(manifold(model), "2-D latent manifold", 20)
    common.write_report(folder, report, figs)
    return report


def grid_figure(images: Tensor, title: str, ncol: int = 8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(images.float().reshape(-1, *images.shape[-3:]).cpu(), nrow=ncol, pad_value=1.0)
    rows = math.ceil(len(images) / ncol)
    fig, ax = plt.subplots(figsize=(ncol * 0.6, rows * 0.6 + 0.4))
    ax.imshow(grid.permute(1, 2, 0), cmap="gray")
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    return fig


def main(argv=None) -> None:
    parser = common.application_parser(
        "generate",
        "Generation: a VAE's prior samples and interpolations, judged by an MNIST classifier (trained once\n"
        "and cached): its mean confidence, the entropy of its predicted classes and the Frechet distance of\n"
        "its features to the test images'.",
        "report.json (sample quality of the VAE, of the test images and of the optional baseline) and\n"
        "vae_samples.png, interpolation.png, manifold.png (2-D latents), ae_gaussian_code_samples.png\n"
        "(with --baseline_ckpt_path) into <run>/apps/generate/ (or --out DIR), and the figures to\n"
        "TensorBoard; the classifier is cached at --classifier.",
    )
    parser.add_argument(
        "--baseline_ckpt_path", default=None, help="a plain AE checkpoint: its decoder fed Gaussian-fitted codes"
    )
    parser.add_argument(
        "--classifier",
        default="lightning_logs/mnist_classifier/classifier.ckpt",
        help="the judge's checkpoint, trained and written here if missing",
    )
    parser.add_argument("--samples", type=number(int, minimum=1), default=10000, help="samples judged")
    parser.add_argument(
        "--classifier_epochs", type=number(int, minimum=1), default=4, help="if the classifier must be trained"
    )
    common.run_main(run, parser, argv, report="generate")
