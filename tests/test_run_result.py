"""result.json: every command records how it ended, its metrics and checkpoints, as data."""

import json

import pytest

from aelight import run_result
from aelight.commands import main
from aelight.errors import exit_saying, exit_with_error
from aelight.runtime import PRUNED_EXIT


def read(path) -> dict:
    return json.loads(path.read_text())


def test_fit_test_and_an_application_each_write_their_result_with_metrics_and_checkpoints(
    cli_args, tiny_data, tmp_path
):
    main(cli_args("fit", "--config=configs/ae.yaml", epochs=2))
    run = tmp_path / "logs" / "ae" / "version_0"
    fit = read(run / "result.json")
    assert fit["schema"] == 1 and fit["command"] == "fit" and fit["status"] == "completed" and fit["exit_code"] == 0
    assert fit["epochs"] == 2 and fit["steps"] > 0 and fit["seconds"] > 0 and fit["folder"] == str(run)
    assert fit["checkpoints"]["best"] == str(run / "checkpoints" / "best.ckpt")
    assert fit["checkpoints"]["last"] == str(run / "checkpoints" / "last.ckpt")
    # the best is the lowest val/loss the run logged; the final values are the last epoch's
    assert fit["metrics"]["best"]["val/loss"] == pytest.approx(fit["metrics"]["final"]["val/loss_best"])
    assert fit["metrics"]["best"]["val/loss"] <= fit["metrics"]["final"]["val/loss"]
    assert fit["metrics"]["test"] == {} and {"torch", "lightning", "aelight", "python"} <= set(fit["versions"])

    main(cli_args("test", "--config=configs/ae.yaml", "--ckpt_path=best"))  # logs into the run it tests
    test = read(run / "result.json")
    assert test["command"] == "test" and test["status"] == "completed"
    assert set(test["metrics"]["test"]) >= {"test/mse", "test/psnr", "test/ssim"}
    assert test["checkpoints"] == {"best": None, "last": None, "loaded": fit["checkpoints"]["best"]}
    assert read(run / "result_fit.json") == fit and read(run / "result_test.json") == test

    report_folder = tmp_path / "features"
    main(["features", f"--ckpt_path={fit['checkpoints']['best']}", f"--data.data_dir={tiny_data}",
          "--data.val_size=100", "--max_iter=20", f"--out={report_folder}"])  # fmt: skip
    app = read(report_folder / "result.json")
    report = read(report_folder / "report.json")
    assert (
        app["command"] == "features"
        and app["status"] == "completed"
        and app["report"] == str(report_folder / "report.json")
    )
    assert app["metrics"]["report"]["logistic_regression_test_accuracy"] == report["logistic_regression_test_accuracy"]


def test_a_command_that_fails_records_why_at_the_file_a_sweep_names_and_leaves_no_run_folder(cli_args, tmp_path,
                                                                                             monkeypatch):  # fmt: skip
    result_file = tmp_path / "r.json"
    monkeypatch.setenv(run_result.RESULT_FILE_ENV, str(result_file))
    with pytest.raises(SystemExit):  # a typo in an option's name: the parser's own reason, in one line
        main(cli_args("fit", "--config=configs/ae.yaml", "--model.init_args.optimiser.init_args.lr=0.1"))
    failed = read(result_file)
    assert failed["status"] == "failed" and failed["exit_code"] == 2 and failed["folder"] is None
    assert "unrecognized arguments: --optimiser.init_args.lr=0.1" in failed["reason"] and "\n" not in failed["reason"]
    with pytest.raises(SystemExit):  # a user's mistake found after parsing: aelight's one line
        main(["fit", "--config=configs/ae.yaml", f"--data.data_dir={tmp_path / 'none'}", "--data.download=false",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])  # fmt: skip
    missing = read(result_file)
    assert missing["exit_code"] == 1 and missing["reason"].startswith(f"mnist data not found in {tmp_path}/none")
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("version_*"))


@pytest.mark.parametrize(
    "end, status, code",
    [
        (lambda: None, "completed", 0),
        (lambda: exit_with_error("data.batch_size must be at least 1"), "failed", 1),
        (lambda: exit_saying("stopped: the sweep pruned this trial", PRUNED_EXIT), "pruned", PRUNED_EXIT),
        (lambda: exit_saying("stopped by SIGTERM", 143), "interrupted", 143),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt), "interrupted", 130),
        (lambda: 1 / 0, "failed", 1),
    ],
)
def test_how_a_command_ends_is_its_status(tmp_path, end, status, code):
    with pytest.raises((SystemExit, KeyboardInterrupt, ZeroDivisionError)) if code else open(tmp_path / "x", "w"):
        with run_result.recording("fit", ["fit"]) as result:
            result.folder = str(tmp_path)
            end()
    written = run_result.read(tmp_path / "result.json")
    assert (written.status, written.exit_code) == (status, code)
    assert written.reason == {0: "", 1: written.reason, PRUNED_EXIT: "stopped: the sweep pruned this trial",
                              143: "stopped by SIGTERM", 130: "interrupted"}[code]  # fmt: skip
    if status == "failed":
        assert written.reason in ("data.batch_size must be at least 1", "ZeroDivisionError: division by zero")
    assert (
        run_result.current() is None
        and (tmp_path / "result_fit.json").read_text() == (tmp_path / "result.json").read_text()
    )
