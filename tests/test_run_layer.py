"""The run layer under every command: ``aelight.fit`` / ``aelight.test`` as library calls, one way
from a checkpoint to a model (trusting what the command named, also after training), the structure
rules that keep the command line thin, and a sweep metric that says which value it takes."""

import ast
import json
import sys
import textwrap
from pathlib import Path

import pytest

import aelight
from aelight import run_result
from aelight.commands import main as aelight_command
from aelight.errors import AelightError, ArgumentsError
from aelight.sweep import spec as sweep_spec
from aelight.sweep.trial import values_by_name
from tests.conftest import REPO
from tests.test_layout import import_graph

PACKAGE = REPO / "aelight"


def test_fit_and_test_as_library_calls_return_the_run_s_result_as_its_result_json_says(cli_args):
    fitted = aelight.fit(config="configs/ae.yaml", overrides=cli_args(epochs=2))
    assert isinstance(fitted, aelight.RunResult) and fitted.status == "completed" and fitted.command == "fit"
    on_disk = run_result.read(Path(fitted.folder) / "result.json")
    assert on_disk.checkpoints == fitted.checkpoints and Path(fitted.checkpoints["best"]).is_file()
    assert fitted.epochs == 2 and fitted.steps > 0 and "val/loss" in fitted.metrics["best"]

    tested = aelight.test(config="configs/ae.yaml", overrides=[*cli_args(), "--ckpt_path", "best"])
    assert tested.folder == fitted.folder  # the run's own folder: a test of its checkpoint logs beside its fit
    assert tested.metrics["test"]["test/mse"] > 0
    # the evaluated checkpoint's epoch and step, not a fresh trainer's 0
    best_epoch = json.loads(Path(fitted.folder, "result_fit.json").read_text())["epochs"]
    assert tested.steps > 0 and 0 <= tested.epochs <= best_epoch


def test_a_library_call_raises_the_typed_error_and_records_it_without_exiting(cli_args, tmp_path):
    with pytest.raises(ArgumentsError, match="max_epocs"):
        aelight.fit(config="configs/ae.yaml", overrides=[*cli_args(), "--trainer.max_epocs", "1"])
    with pytest.raises(AelightError, match="no best.ckpt"):
        aelight.test(config="configs/ae.yaml", overrides=[*cli_args(), "--ckpt_path", "best"])
    assert not list((tmp_path / "logs").glob("*/version_*"))  # nothing claimed by a run that did not start


def test_the_command_line_says_a_parse_error_in_one_line_and_exits_2(cli_args, capsys):
    with pytest.raises(SystemExit) as exit_:
        aelight_command(["fit", "--config=configs/ae.yaml", *cli_args(), "--trainer.max_epocs=1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aelight: error:") and "aelight fit --help" in err[0]


def test_fit_on_the_command_line_ends_with_its_run_folder_and_best_checkpoint(cli_args, capsys):
    aelight_command(["fit", "--config=configs/ae.yaml", *cli_args()])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    folder = next(Path(cli_args()[-1].split("=", 1)[1]).glob("ae/version_*"))
    assert last.startswith(f"aelight: run folder {folder.resolve()}") or str(folder) in last
    assert "best checkpoint" in last and "best.ckpt (val/loss " in last


def test_anomaly_trains_a_user_s_own_variant_and_loads_back_the_checkpoint_it_wrote(tiny_data, tmp_path, monkeypatch):
    (tmp_path / "mylab_variants.py").write_text(
        textwrap.dedent(
            """
            from aelight.models import AE

            class L1AE(AE):
                '''A user's own variant, in a module of their own.'''
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "report"
    aelight_command(
        ["anomaly", "--config=configs/anomaly/ae.yaml", "--model=mylab_variants.L1AE", "--digits", "3",
         f"--data.data_dir={tiny_data}", "--data.val_size=100", "--device=cpu", "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
         f"--out={out}"]
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["digits"]["3"]["auroc"] <= 1
    (run,) = (tmp_path / "logs" / "anomaly_digit3").glob("version_*")
    fitted = run_result.read(run / "result.json")  # the digit's run records how it ended, as any fit
    assert fitted.command == "fit" and fitted.status == "completed"
    assert "mylab_variants.L1AE" in (run / "config.yaml").read_text()
    del sys.modules["mylab_variants"]


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def test_the_command_line_module_is_thin_and_no_module_of_aelight_is_over_300_lines():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 250
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def test_only_the_entry_point_imports_the_command_line_and_deploy_imports_nothing_from_the_applications():
    graph = import_graph()
    assert {m for m, imported in graph.items() if "aelight.cli" in imported} <= {"aelight.commands"}
    assert {(m, i) for m, imported in graph.items() if m.startswith("aelight.deploy") for i in imported
            if i.startswith("aelight.apps")} == set()  # fmt: skip
    for layer in ("aelight.run.folders", "aelight.run.models", "aelight.run.api"):  # under the commands, not on them
        assert not {i for i in graph[layer] if i.startswith(("aelight.apps", "aelight.sweep", "aelight.deploy"))}


def private_lightning_names() -> set[str]:
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    return {n for cls in (LightningCLI, Trainer) for n in dir(cls) if n.startswith("_") and not n.startswith("__")}


def test_no_private_lightning_method_is_overridden_or_called_outside_the_compat_adapter():
    private = private_lightning_names()
    assert "_parse_ckpt_path" in private  # the names are real: the check below can fail
    for name, path in modules().items():
        if name == "aelight.training.lightning_compat":
            continue
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not (defined | used) & private, (name, (defined | used) & private)


def test_one_argparse_number_type_and_one_error_exit():
    raising = {name for name, p in modules().items() if "ArgumentTypeError(" in p.read_text()}
    assert raising == {"aelight.arg_types"}
    catching = {name for name, p in modules().items() if "user_message(err" in p.read_text()}
    assert catching <= {"aelight.errors", "aelight.run.api"}


def test_a_sweep_metric_of_a_fit_names_its_best_or_its_last_value(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("config: configs/ae.yaml\ngrid: {data.batch_size: [16]}\nmetric: val/loss\n")
    with pytest.raises(AelightError, match=r"'val/loss \(best\)' or 'val/loss \(last\)'"):
        sweep_spec.load_spec(str(spec_file))
    spec_file.write_text("config: configs/ae.yaml\ngrid: {data.batch_size: [16]}\nmetric: test/mse (best)\n")
    with pytest.raises(AelightError, match="has one"):
        sweep_spec.load_spec(str(spec_file))
    spec_file.write_text("config: configs/ae.yaml\ngrid: {data.batch_size: [16]}\nmetric: val/loss (last)\n")
    assert sweep_spec.load_spec(str(spec_file)).direction == "minimize"

    result = run_result.RunResult(command="fit")
    result.metrics["final"] = {"val/loss": 0.30, "val/mse": 0.02, "val/mse_best": 0.01, "test/mse": 0.5}
    result.metrics["best"] = {"val/loss": 0.25}
    values = values_by_name(result)
    assert values["val/loss (last)"] == 0.30 and values["val/loss (best)"] == 0.25
    assert values["val/mse (last)"] == 0.02 and values["val/mse (best)"] == 0.01
    assert "test/mse (best)" not in values and values["test/mse"] == 0.5


def test_every_command_on_a_checkpoint_takes_fit_s_data_download_option_and_refuses_abbreviations(capsys):
    from aelight.apps import represent
    from aelight.deploy import export

    for parser in (represent.parser("features"), export.parser()):
        args = parser.parse_args(["--ckpt_path=x.ckpt", "--out=o", "--data.download", "false"])
        assert args.download is False
        with pytest.raises(SystemExit):  # what it abbreviates is not guessed
            parser.parse_args(["--ckpt_path=x.ckpt", "--out=o", "--data.data_d", "data/"])
        assert "unrecognized arguments: --data.data_d" in capsys.readouterr().err
        with pytest.raises(SystemExit):  # the data of a checkpoint were fetched by its fit
            parser.parse_args(["--ckpt_path=x.ckpt", "--out=o", "--data.download", "true"])
        assert "aelight fit ... --data.download true" in capsys.readouterr().err
    with pytest.raises(ArgumentsError, match="unrecognized arguments: --trainer.max_epoch"):
        from aelight.run.api import parsed

        parsed(["--config=configs/ae.yaml", "--trainer.max_epoch=1"])
