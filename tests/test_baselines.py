"""What the autoencoders are measured against: the k-NN one-class scorer, the maps and codes of no
network, and a checkpoint's network re-drawn untrained, each against an independent oracle
(scikit-learn, or the network that `aelight fit` builds from the same seed)."""

import csv
import glob
import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from aelight.apps import baselines
from aelight.apps.common import full_training_set, images_and_labels, load_untrained
from aelight.apps.represent import reduce_parser
from aelight.apps.scorers import PixelNearestNeighbours, baseline_scorer
from aelight.commands import main as aelight
from aelight.errors import ConfigError
from aelight.run.run_data import mnist_data as data
from aelight.run.trainer_cli import build_cli
from aelight.sweep import results as sweep_results
from aelight.sweep import spec as sweep_spec
from aelight.sweep import trial as sweep_trial


def tiny(tiny_data) -> list[str]:
    return [f"--data.data_dir={tiny_data}", "--data.val_size=100", "--device=cpu"]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_the_knn_scorer_is_the_mean_distance_to_the_k_nearest_normal_images_as_scikit_learn_finds_them(distance):
    generator = torch.Generator().manual_seed(0)
    normal, queries = torch.rand(300, 1, 8, 8, generator=generator), torch.rand(50, 1, 8, 8, generator=generator)
    scorer = PixelNearestNeighbours(distance, k=4)
    scorer.fit_scorer(normal, normal[:10])
    oracle = NearestNeighbors(n_neighbors=4, metric=distance, algorithm="brute").fit(normal.flatten(1).numpy())
    expected = oracle.kneighbors(queries.flatten(1).numpy())[0].mean(1)
    assert np.allclose(scorer.anomaly_score(queries).numpy(), expected, rtol=1e-6, atol=1e-9)


def test_the_cosine_score_ignores_brightness_and_the_euclidean_does_not():
    normal = torch.rand(20, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    dimmer = normal[:3] * 0.5  # the same shapes, half as bright
    cosine, euclidean = PixelNearestNeighbours("cosine", 1), PixelNearestNeighbours("euclidean", 1)
    for scorer in (cosine, euclidean):
        scorer.fit_scorer(normal, normal)
    assert torch.allclose(cosine.anomaly_score(dimmer), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert (euclidean.anomaly_score(dimmer) > 0.1).all()


def test_pixel_nn_is_the_euclidean_one_nearest_neighbour_and_refuses_other_settings():
    assert (baseline_scorer("pixel_nn").distance, baseline_scorer("pixel_nn").k) == ("euclidean", 1)
    assert (baseline_scorer("knn", "cosine", 5).distance, baseline_scorer("knn", "cosine", 5).k) == ("cosine", 5)
    with pytest.raises(ValueError, match="--baseline knn"):
        baseline_scorer("pixel_nn", "cosine")


def test_the_knn_baseline_of_anomaly_writes_its_scores_in_the_direction_of_anomaly(tiny_data, tmp_path):
    out = tmp_path / "knn"
    options = ["--baseline=knn", "--distance=cosine", "--k=3", "--digits", "1", *tiny(tiny_data)]
    aelight(["anomaly", *options, f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    assert (report["baseline"], report["distance"], report["k"], report["inputs"]) == ("knn", "cosine", 3, "raw")
    dm = data(str(tiny_data), val_size=100, classes=[1])
    normal = images_and_labels(dm, "train", "cpu")[0].flatten(1).double().numpy()
    test, labels = images_and_labels(dm, "test", "cpu")
    oracle = NearestNeighbors(n_neighbors=3, metric="cosine", algorithm="brute").fit(normal)
    expected = oracle.kneighbors(test.flatten(1).double().numpy())[0].mean(1)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert np.allclose([float(r["score"]) for r in rows], expected, rtol=1e-6, atol=1e-9)
    anomalous = labels.numpy() != 1
    # a higher score means more anomalous: the AUROC is of the score itself, not of its negation
    assert report["digits"]["1"]["auroc"] == pytest.approx(roc_auc_score(anomalous, expected), abs=1e-6)
    assert report["digits"]["1"]["auroc"] > 0.5


def test_the_knn_baseline_reads_deskewed_pixels_when_the_data_options_say_so(tiny_data, tmp_path):
    out = tmp_path / "knn_deskewed"
    aelight(["anomaly", "--baseline=knn", "--digits", "2", "--data.deskew=true", *tiny(tiny_data), f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    dm = data(str(tiny_data), val_size=100, classes=[2], deskew=True)
    normal = images_and_labels(dm, "train", "cpu")[0].flatten(1).double().numpy()
    test, labels = images_and_labels(dm, "test", "cpu")
    expected = NearestNeighbors(n_neighbors=1).fit(normal).kneighbors(test.flatten(1).double().numpy())[0][:, 0]
    assert report["inputs"] == "deskewed"
    assert report["digits"]["2"]["auroc"] == pytest.approx(roc_auc_score(labels.numpy() != 2, expected), abs=1e-6)


def test_anomaly_untrained_scores_with_the_config_network_as_fit_would_start_it(tiny_data, tmp_path):
    out = tmp_path / "untrained"
    options = ["--config=configs/anomaly/ae.yaml", "--seed_everything=3", *tiny(tiny_data)]
    aelight(["anomaly", "--untrained", "--digits", "0", *options, f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    assert report["untrained"] is True and report["digits"]["0"]["train_seconds"] == 0.0
    assert not glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)  # nothing trained, nothing saved
    cli = build_cli(["--config=configs/anomaly/ae.yaml", "--seed_everything=3", f"--data.data_dir={tiny_data}",
                     "--data.val_size=100", "--data.classes=[0]", "--trainer.logger=false"], run=False)  # fmt: skip
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    test, labels = images_and_labels(dm, "test", "cpu")
    cli.model.fit_scorer(images_and_labels(dm, "train", "cpu")[0], images_and_labels(dm, "val", "cpu")[0])
    with torch.no_grad():
        scores = cli.model.eval().anomaly_score(test).float().numpy()
    assert report["digits"]["0"]["auroc"] == pytest.approx(roc_auc_score(labels.numpy() != 0, scores), abs=1e-6)


def test_a_baseline_and_untrained_together_are_refused_in_one_line(tiny_data, capsys):
    with pytest.raises(SystemExit) as exit_:
        aelight(["anomaly", "--baseline=knn", "--untrained", "--config=configs/anomaly/ae.yaml", *tiny(tiny_data)])
    assert exit_.value.code == 1 and "--untrained" in capsys.readouterr().err


def test_reduce_pca_baseline_is_scikit_learns_map_scored_by_the_same_5_nn(tiny_data, tmp_path):
    out = tmp_path / "pca"
    aelight(["reduce", "--baseline=pca", "--seed_everything=0", *tiny(tiny_data), f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    dm = data(str(tiny_data), val_size=100)
    train_x, train_y = full_training_set(dm, "cpu")
    test_x, test_y = images_and_labels(dm, "test", "cpu")
    pca = PCA(n_components=2, random_state=0).fit(train_x.flatten(1).numpy())
    knn = KNeighborsClassifier(n_neighbors=5).fit(pca.transform(train_x.flatten(1).numpy()), train_y.numpy())
    expected = knn.score(pca.transform(test_x.flatten(1).numpy()), test_y.numpy())
    assert report["knn5_test_accuracy"] == pytest.approx(expected)
    assert (report["baseline"], report["code_size"], report["inputs"]) == ("pca", 2, "raw")
    assert (out / "scatter.png").exists()


def test_a_map_is_fitted_on_training_images_only_and_transforms_the_test_images():
    rng = np.random.default_rng(0)
    train, test = rng.random((200, 30)), rng.random((40, 30)) + 5.0  # far from every training image
    train_codes, test_codes = baselines.fitted_map("pca", train, test, seed=0, components=3)
    pca = PCA(n_components=3, random_state=0).fit(train)
    assert np.allclose(test_codes, pca.transform(test)) and np.allclose(train_codes, pca.transform(train))


def test_features_pca_baseline_is_fitted_on_the_training_split_only():
    rng = np.random.default_rng(1)
    train, test = rng.random((120, 20)), rng.random((30, 20))
    train[100:] += 10.0  # the validation rows, far away: a fit that saw them would turn towards them
    train_codes, test_codes = baselines.baseline_codes("pca", train, test, fit_rows=100, components=4)
    pca = PCA(n_components=4, random_state=0).fit(train[:100])
    assert np.allclose(test_codes, pca.transform(test), atol=1e-5) and train_codes.shape == (120, 4)
    with pytest.raises(Exception, match="--components"):
        baselines.baseline_codes("pca", train, test, fit_rows=100)


def test_features_untrained_redraws_the_network_that_the_run_started_from(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    options = [f"--data.data_dir={tiny_data}", "--data.val_size=100", "--data.batch_size=32", "--seed_everything=7",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
    aelight(["fit", "--config=configs/ae.yaml", *options, "--trainer.max_epochs=1",
             f"--trainer.logger.init_args.save_dir={logs}"])  # fmt: skip
    (best,) = glob.glob(str(logs / "ae" / "version_0" / "checkpoints" / "best.ckpt"))
    untrained, _, seed = load_untrained(best, "cpu")
    started = build_cli(["--config=configs/ae.yaml", *options, "--trainer.logger=false"], run=False).model
    trained = torch.load(best, weights_only=True)["state_dict"]
    assert seed == 7
    for name, weight in started.state_dict().items():
        assert torch.equal(untrained.state_dict()[name], weight), name  # the very weights fit started from
    assert not torch.equal(untrained.state_dict()["encoder.net.0.weight"], trained["encoder.net.0.weight"])
    out = tmp_path / "probe"
    aelight(["features", f"--ckpt_path={best}", "--untrained", "--max_iter=200", *tiny(tiny_data), f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    assert report["untrained"] is True and report["code_size"] == 32
    assert 0.1 < report["logistic_regression_test_accuracy"] <= 1


def test_features_pixels_baseline_probes_every_pixel(tiny_data, tmp_path):
    out = tmp_path / "pixels"
    aelight(["features", "--baseline=pixels", "--max_iter=200", *tiny(tiny_data), f"--out={out}"])
    report = json.loads((out / "report.json").read_text())
    assert (report["baseline"], report["code_size"], report["inputs"]) == ("pixels", 784, "raw")


def test_a_checkpoint_and_a_baseline_together_are_refused(tiny_data, capsys):
    with pytest.raises(SystemExit) as exit_:
        aelight(["reduce", "--baseline=pca", "--ckpt_path=x.ckpt", *tiny(tiny_data)])
    assert exit_.value.code == 1 and "not both" in capsys.readouterr().err


def test_a_baseline_spec_needs_no_config_and_its_trials_run_the_application_alone(tmp_path):
    spec_file = tmp_path / "map.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "command": "reduce",
                "app_options": ["--baseline", "umap"],
                "grid": {"data.deskew": [True]},
                "seeds": [3],
                "metric": "knn5_val_accuracy",
            }
        )  # fmt: skip
    )
    spec = sweep_spec.load_spec(str(spec_file))
    assert not spec.trains and spec.direction == "maximize"
    worker = ["--trainer.accelerator=cpu", "--data.data_dir", "d"]  # a CPU worker's placement, the sweep's data
    (command,) = sweep_trial.trial_commands(spec, {"data.deskew": True, "seed": 3}, 3, tmp_path, worker)
    assert command.argv[0] == "reduce" and "--seed_everything=3" in command.argv  # no fit before it
    assert {"--data.deskew=true", "--data.data_dir=d", "umap", "--device=cpu"} <= set(command.argv)
    assert not [a for a in command.argv if a.startswith("--trainer.")]  # an application takes no trainer option
    reduce_parser().parse_args(command.argv[1:])  # all of them the application's own
    trained = sweep_spec.load_spec("configs/sweeps/map_2d.yaml")
    assert trained.trains and trained.config == [] and "config" in trained.grid
    spec_file.write_text(yaml.safe_dump({"command": "reduce", "grid": {"data.deskew": [True]}}))
    with pytest.raises(ConfigError, match="base config"):  # without a baseline it trains, so it needs a model
        sweep_spec.load_spec(str(spec_file))
    spec_file.write_text(yaml.safe_dump({"command": "features", "config": "configs/ae.yaml",
                                         "app_options": ["--untrained"]}))  # fmt: skip
    with pytest.raises(ConfigError, match="--untrained"):
        sweep_spec.load_spec(str(spec_file))


def test_an_untrained_one_class_spec_logs_no_run_and_draws_its_network_from_the_trial_seed(tmp_path):
    spec = sweep_spec.load_spec("configs/sweeps/baselines_one_class_untrained.yaml")
    (command,) = sweep_trial.trial_commands(spec, {"digits": 4, "seed": 2}, 2, tmp_path, [])
    assert "--untrained" in command.argv and "--seed_everything=2" in command.argv
    assert not any(a.startswith("--trainer.logger") for a in command.argv)


def test_one_class_means_are_given_per_baseline_setting_not_over_all_of_them():
    spec = sweep_spec.SweepSpec(path="t", command="anomaly", metric="auroc", direction="maximize", report=["auroc"])
    table = [{"trial": i, "status": "complete", "seed": 0, "distance": distance, "digits": digit, "auroc": auroc}
             for i, (distance, digit, auroc) in enumerate(
                 [("cosine", 0, 0.9), ("cosine", 1, 0.8), ("euclidean", 0, 0.6), ("euclidean", 1, 0.5)])]  # fmt: skip
    markdown = sweep_results.results_markdown(table, spec, "t")
    assert "distance=cosine: mean auroc over the 2 settings: 0.8500" in markdown
    assert "distance=euclidean: mean auroc over the 2 settings: 0.5500" in markdown
    assert "0.7000" not in markdown  # the mean over both distances is no protocol's figure
