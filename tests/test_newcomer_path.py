"""What a new user met on the way from README to their own runs, each as it must behave now: a
whole number of batches is that many batches, a run of a user's ``--model`` is named after it."""

import json
from pathlib import Path

import pytest

from aelight.commands import main as aelight_command
from aelight.training.trainer import Trainer


def test_a_whole_number_given_to_a_batch_limit_means_that_many_batches(cli_args):
    # 1 arrived as 1.0 ("100% of the batches"): a one-batch check trained a whole epoch
    logs = Path(cli_args()[-1].split("=", 1)[1])
    steps = {}
    for batches in (1, 2):
        name = f"--trainer.logger.init_args.name=limit{batches}"
        aelight_command(["fit", "--config=configs/ae.yaml", *cli_args(name, batches=batches)])
        steps[batches] = json.loads(next(logs.glob(f"limit{batches}/version_*/result.json")).read_text())["steps"]
    assert steps[1] > 0 and steps[2] == 2 * steps[1]  # the tiny data holds far more than two batches


@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), ("0.5", 0.5), ("1.0", 1.0), ("0", 0)])
def test_batch_limits_parse_as_counts_or_fractions(given, expected):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Trainer, "trainer")
    config = parser.parse_args([f"--trainer.limit_val_batches={given}"])
    value = config.trainer.limit_val_batches
    assert value == expected and isinstance(value, int) == isinstance(expected, int)
    # the saved config.yaml says the same (a dump through the int type once wrote 0.5 as 0)
    again = parser.parse_string(parser.dump(config)).trainer.limit_val_batches
    assert again == expected and isinstance(again, int) == isinstance(expected, int)


def test_a_run_of_a_model_given_on_the_command_line_is_named_after_it_and_found_by_best(cli_args, capsys):
    variant = ["--config=configs/ae.yaml", "--model=tests.user_variants.L1AE"]
    aelight_command(["fit", *variant, *cli_args()])
    logs = Path(cli_args()[-1].split("=", 1)[1])
    assert [p.name for p in logs.iterdir()] == ["l1ae"]  # not the config's name, ae
    aelight_command(["test", *variant, *cli_args(), "--ckpt_path=best"])
    assert "test/mse" in capsys.readouterr().out
    # the config's own model does not pick up the variant's run
    with pytest.raises(SystemExit) as exit_:
        aelight_command(["test", "--config=configs/ae.yaml", *cli_args(), "--ckpt_path=best"])
    assert exit_.value.code != 0 and "no best.ckpt" in capsys.readouterr().err


def test_the_readme_is_a_page_to_skim_whose_reference_links_all_resolve():
    import re

    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 230  # was 437 lines of reference manual
    assert "python -m pytest -q" in readme  # the test command CI runs
    pages = [REPO / "docs" / name for name in ("runs.md", "sweeps.md", "own-images.md", "guarantees.md")]
    for page in pages:
        assert f"(docs/{page.name})" in readme and page.is_file()
    for document in [REPO / "README.md", *pages, REPO / "docs" / "applications.md"]:
        for target in re.findall(r"\]\(([^)#:]+)\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links {target}, which is missing"
    # one thing said about Ctrl-C, the same as result.json's table
    assert "Ctrl-C with 1" not in readme and "exit 130" in readme


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_ctrl_c_while_a_command_starts_is_an_interruption_without_a_traceback(tiny_data, tmp_path, delay):
    # a Ctrl-C while torch and Lightning were loading printed a KeyboardInterrupt traceback (exit 1)
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO, answer_ctrl_c

    record = tmp_path / "result.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aelight", "anomaly", "--baseline=knn", "--digits", "1",
         f"--data.data_dir={tiny_data}", "--data.val_size=100", f"--out={tmp_path / 'out'}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AELIGHT_RESULT_FILE": str(record)},
        preexec_fn=answer_ctrl_c,
    )  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the command ended before the Ctrl-C came")
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "Ctrl-C" in err.strip().splitlines()[-1]
    assert json.loads(record.read_text())["status"] == "interrupted"
