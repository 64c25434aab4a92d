"""The trust boundary and hard faults, through the real commands: checkpoints that name foreign code
import nothing, runs started together never share a folder, nothing written is ever torn, and every
user mistake is one ``aelight: error:`` line with a non-zero exit code."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aelight.commands import main
from tests.conftest import REPO, answer_ctrl_c, kill_inside_a_slow_save, make_mnist_root, short_run_args, write_idx

CONFIG = "--config=configs/ae.yaml"


def aelight_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "aelight", *args]


def start(cmd: list[str], cwd=REPO, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=answer_ctrl_c)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


FORKED_RUNS_DRIVER = textwrap.dedent(
    """
    # Imports aelight and, through it, torch and Lightning once, then forks a process for each
    # command line of the JSON file argv[1]: the i-th writes its output to i.out and i.err in the
    # folder argv[2] and exits with the command's exit code. Given argv[3], each first says it is
    # ready (i.ready) and waits for that file to appear, so their runs start within milliseconds of
    # each other, and creating a run folder is slowed down (as on a network file system), which
    # widens any gap between choosing a version number and creating its folder.
    import json, os, pathlib, sys, time, traceback

    commands, folder = json.loads(pathlib.Path(sys.argv[1]).read_text()), pathlib.Path(sys.argv[2])
    go = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else None
    if go:
        real_mkdir = os.mkdir

        def slow_mkdir(path, *args, **kwargs):
            if os.path.basename(os.fspath(path)).startswith("version_"):
                time.sleep(0.5)
            return real_mkdir(path, *args, **kwargs)

        os.mkdir = slow_mkdir
    import aelight.cli  # noqa: F401
    from aelight.commands import main

    children = []
    for index, argv in enumerate(commands):
        pid = os.fork()
        if pid:
            children.append(pid)
            continue
        code = 1
        try:
            for fd, suffix in ((1, "out"), (2, "err")):
                os.dup2(os.open(folder / f"{index}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            if go:
                (folder / f"{index}.ready").touch()
                while not go.exists():
                    time.sleep(0.001)
            main(argv)
            code = 0
        except SystemExit as exit_:  # as the interpreter ends a process: a message printed, exit 1
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:  # as the interpreter prints an uncaught exception
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]))
    """
)


def forked_runs(commands: list[list[str]], folder: Path, together: bool = False) -> list[tuple[int, str, str]]:
    """Runs the ``aelight`` command lines, each in a process of its own forked from one that
    imported aelight once (the sweep's trials start the same way); with ``together``, their runs
    start at the same moment. Returns (exit code, stdout, stderr) of each."""
    folder.mkdir(parents=True)
    (folder / "commands.json").write_text(json.dumps(commands))
    go = folder / "go"
    driver = start([sys.executable, "-c", FORKED_RUNS_DRIVER, str(folder / "commands.json"), str(folder),
                    *([str(go)] if together else [])])  # fmt: skip
    if together:
        deadline = time.time() + 120
        while len(list(folder.glob("*.ready"))) < len(commands) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.01)
        go.touch()
    code, out, err = finish(driver)
    assert code == 0, err[-3000:]
    codes = json.loads(out.splitlines()[-1])
    return [(c, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text()) for i, c in enumerate(codes)]


def assert_one_line_error(code: int, err: str, *needles: str, exit_code: int = 1) -> None:
    assert code == exit_code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in err, (needle, err[-3000:])


def run_dirs(logs: Path, name: str) -> list[Path]:
    return sorted(logs.glob(f"{name}/version_*"))


@pytest.fixture(scope="module")
def fitted(tiny_data, tmp_path_factory):
    """A 1-epoch AE run and a 1-epoch VAE run on the tiny data (their folders and checkpoints)."""
    logs = tmp_path_factory.mktemp("trust_logs")
    for config in ("ae", "vae"):
        main(tiny_args(tiny_data, logs, "fit", f"--config=configs/{config}.yaml"))
    return {
        "logs": logs,
        "ae": logs / "ae" / "version_0" / "checkpoints" / "best.ckpt",
        "vae": logs / "vae" / "version_0" / "checkpoints" / "best.ckpt",
    }


def tiny_args(data_dir, logs, *extra, epochs: int = 1) -> list[str]:
    return short_run_args(data_dir, logs, *extra, epochs=epochs)


# --- a checkpoint is data, never code -----------------------------------------------------------------

MARKER_MODULE = textwrap.dedent(
    """
    # Imported only if aelight imports a class path that a checkpoint names: it leaves a marker file.
    import os, pathlib
    pathlib.Path(os.environ["AELIGHT_TEST_MARKER"]).write_text("imported")

    class Enc:
        pass

    def inst(*args, **kwargs):
        pass
    """
)


def plant(tmp_path: Path) -> tuple[Path, dict]:
    """A module ``evilmark`` on sys.path (via PYTHONPATH) that writes ``marker`` when imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "evilmark.py").write_text(MARKER_MODULE)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(site), "AELIGHT_TEST_MARKER": str(marker)}
    return marker, env


def crafted(source: Path, dest: Path, where: str) -> Path:
    """A copy of a real checkpoint whose hyperparameters name ``evilmark`` at ``where``."""
    ckpt = torch.load(source, weights_only=True)
    hp = ckpt["hyper_parameters"]
    if where == "encoder":
        hp["encoder"]["class_path"] = "evilmark.Enc"
    elif where == "optimizer":
        hp["optimizer"] = "evilmark.inst"  # a Callable-typed argument given as an import path
    elif where == "instantiator":
        hp["_instantiator"] = "evilmark.inst"
    elif where == "model":
        hp["_class_path"] = "evilmark.Enc"
    elif where == "datamodule":
        ckpt["datamodule_hyper_parameters"]["_instantiator"] = "evilmark.inst"
    torch.save(ckpt, dest)
    return dest


def application(command: str):
    """``aelight <command>`` as a function of its options."""
    return lambda argv: main([command, *argv])


APPS = {command: application(command) for command in ("reduce", "features", "anomaly", "generate", "denoise", "nll")}


def exit_code_and_stderr(fn, argv, capsys) -> tuple[int, str]:
    """Runs an entry point in this process; its exit code and what it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        fn(argv)
    return exit_.value.code, capsys.readouterr().err


def test_a_crafted_checkpoint_imports_nothing_through_any_entry_point(fitted, tiny_data, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    marker, env = plant(tmp_path)
    monkeypatch.syspath_prepend(env["PYTHONPATH"])
    monkeypatch.setenv("AELIGHT_TEST_MARKER", str(marker))
    ae = {w: crafted(fitted["ae"], tmp_path / f"ae_{w}.ckpt", w) for w in ("encoder", "optimizer", "instantiator")}
    ae["model"] = crafted(fitted["ae"], tmp_path / "ae_model.ckpt", "model")
    ae["datamodule"] = crafted(fitted["ae"], tmp_path / "ae_datamodule.ckpt", "datamodule")
    vae_encoder = crafted(fitted["vae"], tmp_path / "vae_encoder.ckpt", "encoder")
    classifier = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_instantiator": "evilmark.inst"}}, classifier)
    logs = tmp_path / "logs"
    data = [f"--data.data_dir={tiny_data}", "--data.val_size=100", "--device=cpu", f"--out={tmp_path / 'reports'}"]
    cases = {
        "test encoder": (main, tiny_args(tiny_data, logs, "test", CONFIG, f"--ckpt_path={ae['encoder']}")),
        "test instantiator": (main, tiny_args(tiny_data, logs, "test", CONFIG, f"--ckpt_path={ae['instantiator']}")),
        "predict optimizer": (main, tiny_args(tiny_data, logs, "predict", CONFIG, f"--ckpt_path={ae['optimizer']}")),
        "validate datamodule": (main, tiny_args(tiny_data, logs, "validate", CONFIG,
                                                f"--ckpt_path={ae['datamodule']}")),
        "fit resume": (main, tiny_args(tiny_data, logs, "fit", CONFIG, f"--ckpt_path={ae['model']}")),
        "fit init_weights": (main, tiny_args(tiny_data, logs, "fit", CONFIG,
                                             f"--model.init_args.init_weights={ae['encoder']}")),
        "reduce": (APPS["reduce"], [f"--ckpt_path={ae['instantiator']}", *data]),
        "features": (APPS["features"], [f"--ckpt_path={ae['model']}", *data]),
        "denoise": (APPS["denoise"], [f"--ckpt_path={ae['encoder']}", *data]),
        "nll": (APPS["nll"], [f"--ckpt_path={vae_encoder}", *data]),
        "generate": (APPS["generate"], [f"--ckpt_path={vae_encoder}", *data]),
        "generate baseline": (APPS["generate"], [f"--ckpt_path={fitted['vae']}",
                                                 f"--baseline_ckpt_path={ae['optimizer']}", *data]),
        "generate classifier": (APPS["generate"], [f"--ckpt_path={fitted['vae']}", f"--classifier={classifier}",
                                                   "--samples=10", *data]),
    }  # fmt: skip
    for case, (fn, argv) in cases.items():
        code, err = exit_code_and_stderr(fn, argv, capsys)
        assert code == 1, (case, err[-2000:])
        assert "refused" in err and "evilmark" in err and "nothing was imported" in err, (case, err[-2000:])
        assert not marker.exists() and "evilmark" not in sys.modules, f"{case}: the planted module ran"
    assert not (tmp_path / "reports").exists()  # the refused commands left no empty report folder
    # the real command, as a process: exit 1, one line naming the file and where the class path stands
    code, _, err = finish(start(aelight_cmd(*cases["test encoder"][1]), env=env))
    where = "(at hyper_parameters.encoder.class_path)"
    assert_one_line_error(code, err, f"checkpoint {ae['encoder']} refused: it names 'evilmark.Enc' {where}")
    assert not marker.exists()


def test_untouched_checkpoints_still_load_with_their_class_paths(fitted, tmp_path):
    from aelight.checkpoints import trust
    from aelight.run.models import checkpoint_model_class

    for name in ("ae", "vae"):
        checkpoint = trust.load_checkpoint(fitted[name])
        assert checkpoint_model_class(checkpoint, fitted[name]).__name__ == name.upper()


def test_the_allow_list_is_data_that_names_every_class_aelight_exports_and_nothing_else():
    import inspect

    from aelight import components, models
    from aelight.checkpoints import trust
    from aelight.data import ImageFolderDataModule, MNISTDataModule

    exported = [getattr(models, n) for n in models.__all__] + [MNISTDataModule, ImageFolderDataModule]
    exported += [c for c in (getattr(components, n) for n in components.__all__) if isinstance(c, type)]
    for cls in exported:  # under the defining module's name and the package's
        assert trust.allowed_class(f"{cls.__module__}.{cls.__name__}") is cls, cls
        package = cls.__module__.rsplit(".", 1)[0]
        assert trust.allowed_class(f"{package}.{cls.__name__}") is cls, cls
    defined = {f"{m}.{n}" for m, names in trust.AELIGHT_CLASSES.items() for n in names}
    assert defined == {f"{c.__module__}.{c.__name__}" for c in exported}  # a new model or network is listed too
    assert trust.allowed_class("torch.optim.Adam") is torch.optim.Adam
    for refused in ("aelight.models.autoencoder.torch", "aelight.cli.AELightCLI", "os.system", "aelight.models.F"):
        assert not trust.is_allowed(refused) and trust.allowed_class(refused) is None
    # checking a checkpoint's class paths imports no model: the table is data
    source = inspect.getsource(trust)
    assert "from aelight import" not in source and "import aelight.models" not in source


def test_a_users_own_module_can_be_trusted_explicitly(fitted, tmp_path, monkeypatch):
    from aelight.checkpoints import trust

    evil = crafted(fitted["ae"], tmp_path / "x.ckpt", "encoder")
    with pytest.raises(trust.UntrustedCheckpointError):
        trust.load_checkpoint(evil)
    monkeypatch.setenv(trust.TRUSTED_MODULES_ENV, "evilmark")
    assert trust.load_checkpoint(evil)["hyper_parameters"]["encoder"]["class_path"] == "evilmark.Enc"


def test_a_class_the_command_names_itself_is_trusted_in_its_checkpoints(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AELIGHT_TRUSTED_MODULES", raising=False)
    variant = ["--model=tests.user_variants.L1AE", "--model.l1=0.01"]
    main(tiny_args(tiny_data, tmp_path, "fit", *variant))
    checkpoint = run_dirs(tmp_path, "l1ae")[0] / "checkpoints" / "best.ckpt"
    main(tiny_args(tiny_data, tmp_path, "test", *variant, "--ckpt_path=best"))  # no AELIGHT_TRUSTED_MODULES
    assert "test/mse" in capsys.readouterr().out
    # a command that names another class still refuses the checkpoint, before importing anything
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(tiny_data, tmp_path, "test", CONFIG, f"--ckpt_path={checkpoint}"))
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "'tests.user_variants.L1AE'", "refused")


# --- runs never collide and never lose their record -----------------------------------------------------


def test_three_runs_started_together_get_three_folders_and_intact_checkpoints(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    results = forked_runs([tiny_args(tiny_data, logs, "fit", CONFIG)] * 3, tmp_path / "runs", together=True)
    assert [r[0] for r in results] == [0, 0, 0], [r[2][-2000:] for r in results]
    dirs = run_dirs(logs, "ae")
    assert [d.name for d in dirs] == ["version_0", "version_1", "version_2"]
    for d in dirs:
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
        assert len(list(d.glob("events.out.tfevents.*"))) == 1
        assert (d / "config.yaml").exists()


def test_evaluation_commands_never_overwrite_the_training_config(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    main(tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml", epochs=2))
    (run,) = run_dirs(logs, "ae")
    training_config = (run / "config.yaml").read_text()
    assert "max_epochs: 2" in training_config
    assert "version: null" in training_config  # run again, the saved config starts a new run
    main(tiny_args(tiny_data, logs, "test", "--config=configs/ae.yaml", "--ckpt_path=best", epochs=50))
    main(tiny_args(tiny_data, logs, "predict", "--config=configs/ae.yaml", "--ckpt_path=last",
                   "--data.predict_split=train", epochs=50))  # fmt: skip
    assert (run / "config.yaml").read_text() == training_config
    assert "predict_split: train" in (run / "config_predict.yaml").read_text()
    assert "max_epochs: 50" in (run / "config_test.yaml").read_text()


@pytest.mark.slow  # the same atomic write as the checkpoint's, which the default suite kills mid-write
def test_sigkill_while_writing_predictions_keeps_the_previous_file_and_a_new_run_cleans_up(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    main(tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml"))
    main(tiny_args(tiny_data, logs, "predict", "--config=configs/ae.yaml", "--ckpt_path=last"))
    (run,) = run_dirs(logs, "ae")
    good = (run / "predictions.pt").read_bytes()
    args = tiny_args(tiny_data, logs, "predict", "--config=configs/ae.yaml", "--ckpt_path=last",
                     "--data.predict_split=val")  # fmt: skip
    assert kill_inside_a_slow_save(args, tmp_path / "in_write", 0) == -signal.SIGKILL  # inside predictions.pt
    assert (run / "predictions.pt").read_bytes() == good  # the previous good file is untouched
    (stale,) = run.glob(".predictions.pt.*.tmp")
    # a stale checkpoint temporary too, and files that only look alike, which must stay
    fake_ckpt_tmp = run / "checkpoints" / ".last.ckpt.abcd_123.tmp"
    fake_ckpt_tmp.write_bytes(b"torn")
    keep = [run / "notes.tmp", run / ".predictions.pt.tmp", run / "checkpoints" / ".last.ckpt.toolongname.tmp"]
    for path in keep:
        path.write_text("not ours")
    main(tiny_args(tiny_data, logs, "predict", "--config=configs/ae.yaml", "--ckpt_path=last"))
    assert not stale.exists() and not fake_ckpt_tmp.exists()
    assert all(p.exists() for p in keep)
    assert torch.load(run / "predictions.pt", weights_only=True)["z"].shape == (200, 32)


def test_a_run_started_from_init_weights_resumes_without_the_source_checkpoint(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    main(tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml", "--trainer.logger.init_args.name=source"))
    source = logs / "source" / "version_0" / "checkpoints" / "best.ckpt"
    staged = ["--config=configs/ae.yaml", "--trainer.logger.init_args.name=staged",
              f"--model.init_args.init_weights={source}"]  # fmt: skip
    main(tiny_args(tiny_data, logs, "fit", *staged))
    for path in source.parent.iterdir():
        path.unlink()
    main(tiny_args(tiny_data, logs, "fit", *staged, "--ckpt_path=last", epochs=2))
    last = torch.load(logs / "staged" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1


# --- interruptions and faults ---------------------------------------------------------------------------


def test_sigterm_mid_training_exits_143_and_the_run_resumes(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    args = tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml", epochs=100000)
    proc = start(aelight_cmd(*args))
    last = logs / "ae" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    time.sleep(0.5)  # well inside a later epoch
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc, timeout=120)
    assert_one_line_error(code, err, "stopped by SIGTERM", "--ckpt_path last", exit_code=143)
    epoch = torch.load(last, weights_only=True)["epoch"]
    main(tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml", "--ckpt_path=last", epochs=epoch + 2))
    assert torch.load(last, weights_only=True)["epoch"] == epoch + 1


def test_ctrl_c_mid_training_exits_130_records_an_interruption_and_says_how_to_continue(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    proc = start(aelight_cmd(*tiny_args(tiny_data, logs, "fit", "--config=configs/ae.yaml", epochs=100000)))
    last = logs / "ae" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    code, _, err = finish(proc, timeout=120)
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert "--ckpt_path last" in err.strip().splitlines()[-1]  # the last line says how to continue
    result = json.loads((logs / "ae" / "version_0" / "result.json").read_text())
    assert result["status"] == "interrupted" and result["exit_code"] == 130 and "Ctrl-C" in result["reason"]


def test_a_checkpoint_write_that_fills_the_disk_is_one_line_and_keeps_the_previous_one(
    tiny_data, tmp_path, monkeypatch, capsys
):
    """The full disk without a mount: the OSError is injected where the checkpoint's bytes are written."""
    import errno

    from aelight.checkpoints import io as checkpoint_io

    logs = tmp_path / "logs"
    main(tiny_args(tiny_data, logs, "fit", CONFIG))
    folder = logs / "ae" / "version_0" / "checkpoints"
    real_save = checkpoint_io.torch.save
    # the disk fills during best.ckpt's write (the resumed run's loss improves: best is written), then
    # during last.ckpt's with best's write let through: each file keeps its previous bytes
    for full in ("best.ckpt", "last.ckpt"):
        good = {name: (folder / name).read_bytes() for name in ("best.ckpt", "last.ckpt")}
        attempted = []

        def save_until_full(checkpoint, f, full=full, attempted=attempted):
            attempted.append(os.path.basename(f.name))
            if not os.path.basename(f.name).startswith(f".{full}."):
                return real_save(checkpoint, f)
            f.write(b"\0" * 1024)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint_io.torch, "save", save_until_full)
        argv = tiny_args(tiny_data, logs, "fit", CONFIG, "--ckpt_path=last", epochs=40)
        code, err = exit_code_and_stderr(main, argv, capsys)
        assert any(name.startswith(f".{full}.") for name in attempted), attempted  # the write was tried
        assert_one_line_error(code, err, "is full", str(folder))
        assert (folder / full).read_bytes() == good[full]
        assert torch.load(folder / full, weights_only=True)["state_dict"]
        assert not list(folder.glob(".*.tmp"))
        monkeypatch.setattr(checkpoint_io.torch, "save", real_save)


def test_evaluation_into_a_read_only_folder_fails_before_any_work_without_a_mount(
    fitted, tiny_data, monkeypatch, capsys
):
    """The read-only file system without a mount: the OSError is injected at the writability check's write."""
    import errno

    from aelight import safe_files

    logs = fitted["logs"]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(safe_files.tempfile, "TemporaryFile", read_only)
    for sub in ("test", "predict", "validate"):
        code, err = exit_code_and_stderr(main, tiny_args(tiny_data, logs, sub, CONFIG, "--ckpt_path=best"), capsys)
        assert_one_line_error(code, err, "is not writable (Read-only file system)")
        assert "Testing" not in err and "Predicting" not in err and "Validation" not in err


def test_application_commands_check_their_output_folders_before_any_work(fitted, tiny_data, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    data = [f"--data.data_dir={tiny_data}", "--data.val_size=100", "--device=cpu"]
    digits = ["--config=configs/anomaly/ae.yaml", "--trainer.max_epochs=1", "--digits", "0", "1"]
    classifier = tmp_path / "cache" / "classifier.ckpt"
    cases = [
        ("anomaly", [*digits, *data, f"--out={a_file}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]),
        ("anomaly", [*digits, *data, f"--trainer.logger.init_args.save_dir={a_file}"]),
        ("generate", [f"--ckpt_path={fitted['vae']}", *data, f"--out={a_file}", f"--classifier={classifier}"]),
        ("reduce", [f"--ckpt_path={fitted['ae']}", *data, f"--out={a_file}"]),
    ]
    for app, argv in cases:
        code, err = exit_code_and_stderr(APPS[app], argv, capsys)
        assert code == 1 and f"output folder {a_file} is not writable" in err, (app, err[-2000:])
    assert not (tmp_path / "runs").exists() and not classifier.exists()  # nothing was trained


# --- one line, never a traceback, for every user mistake ------------------------------------------------

CONFIG_MISTAKES = {
    "batch size 0": (["--data.batch_size=0"], "data.batch_size must be at least 1"),
    "negative batch size": (["--data.batch_size=-4"], "data.batch_size must be at least 1"),
    "eval batch size 0": (["--data.eval_batch_size=0"], "data.eval_batch_size must be at least 1"),
    "negative lr": (["--model.init_args.optimizer.init_args.lr=-1"], "Invalid learning rate: -1"),
    "max_epochs below -1": (["--trainer.max_epochs=-5"], "`max_epochs` must be a non-negative integer or -1"),
    "decoder does not fit the encoder": (
        ["--model.init_args.decoder.init_args.in_features=16"],
        "the decoder takes codes of size 16 but the encoder gives 32",
    ),
    "steps_per_batch 0": (["--engine.steps_per_batch=0"], "steps_per_batch must be at least 1"),
    "latent size 0": (
        ["--model.init_args.encoder.init_args.out_features=0", "--model.init_args.decoder.init_args.in_features=0"],
        "MLPEncoder: out_features must be at least 1",
    ),
    "unknown digits in classes": (["--data.classes=[3, 12]"], "data.classes must list digits from 0 to 9"),
    "odd VAE encoder": (
        ["--config=configs/vae.yaml", "--model.init_args.encoder.init_args.out_features=63"],
        "VAE: the encoder's out_features must be even",
    ),
    "negative beta": (["--config=configs/vae.yaml", "--model.init_args.beta=-1"], "VAE: beta must be 0 or more"),
    "negative gaussian_std": (
        ["--config=configs/vae.yaml", "--model.init_args.gaussian_std=-1"],
        "VAE: gaussian_std must be positive",
    ),
    "negative noise": (
        ["--config=configs/denoising.yaml", "--model.init_args.noise_level=-0.1"],
        "noise_level must be between 0 and 1",
    ),
    "noise above 1": (
        ["--config=configs/denoising.yaml", "--model.init_args.noise=masking", "--model.init_args.noise_level=1.5"],
        "noise_level must be between 0 and 1",
    ),
    "sparsity target 1.5": (
        ["--config=configs/sparse_kl.yaml", "--model.init_args.target_activation=1.5"],
        "target_activation must be between 0 and 1",
    ),
    "sparsity target 0": (
        ["--config=configs/sparse_kl.yaml", "--model.init_args.target_activation=0"],
        "target_activation must be between 0 and 1",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_MISTAKES))
def test_config_mistakes_are_one_line_and_exit_1(case, tiny_data, tmp_path, capsys):
    extra, message = CONFIG_MISTAKES[case]
    config = [] if any(a.startswith("--config") for a in extra) else ["--config=configs/ae.yaml"]
    with pytest.raises(SystemExit) as exit_:
        main([*tiny_args(tiny_data, tmp_path / "logs", "fit", *config), *extra])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "aelight: error: " in err and message in err, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("aelight: error:")]) == 1
    for run in (tmp_path / "logs").glob("*/version_*"):  # a failed start leaves no empty run folder
        assert any(run.iterdir()), run


def test_config_mistakes_in_a_real_process_have_no_traceback(tiny_data, tmp_path):
    cases = ["decoder does not fit the encoder", "negative lr"]  # wrapped by jsonargparse; raised inside fit
    cmds = [[*tiny_args(tiny_data, tmp_path / "logs", "fit", CONFIG), *CONFIG_MISTAKES[c][0]] for c in cases]
    for case, (code, _, err) in zip(cases, forked_runs(cmds, tmp_path / "runs")):
        assert_one_line_error(code, err, CONFIG_MISTAKES[case][1])
        assert [line for line in err.splitlines() if "error" in line.lower()] == [
            line for line in err.splitlines() if line.startswith("aelight: error: ")
        ], (case, err)
        assert len([line for line in err.splitlines() if line.startswith("aelight: error: ")]) == 1, (case, err)


def bad_data(tmp_path, kind: str) -> Path:
    root = make_mnist_root(tmp_path / kind, n_train=300, n_test=100)
    raw = root / "MNIST" / "raw"
    if kind == "27x27 images":
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((100, 27, 27), np.uint8))
    elif kind == "label 11":
        labels = np.zeros(100, np.uint8)
        labels[7] = 11
        write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    elif kind == "no images":
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    return root


@pytest.mark.parametrize(
    "kind, message",
    [
        ("27x27 images", "t10k-images-idx3-ubyte: images are 27x27 pixels"),
        ("label 11", "t10k-labels-idx1-ubyte: label 11 at position 7 is outside 0..9"),
        ("no images", "t10k-images-idx3-ubyte: the file holds no images"),
    ],
)
def test_malformed_idx_files_are_named(kind, message, tmp_path, capsys):
    data = bad_data(tmp_path, kind)
    with pytest.raises(SystemExit) as exit_:
        main(tiny_args(data, tmp_path / "logs", "fit", "--config=configs/ae.yaml"))
    assert exit_.value.code == 1
    assert message in capsys.readouterr().err


def test_checkpoint_whose_weights_do_not_fit_is_one_line(fitted, tiny_data, tmp_path, capsys):
    ckpt = torch.load(fitted["ae"], weights_only=True)
    wrong_shape, wrong_keys = dict(ckpt), dict(ckpt)
    wrong_shape["state_dict"] = {**ckpt["state_dict"], "encoder.net.0.weight": torch.zeros(16, 784)}
    wrong_keys["state_dict"] = {k.replace("encoder.", "enc."): v for k, v in ckpt["state_dict"].items()}
    for name, bad, message in (
        ("shape", wrong_shape, "encoder.net.0.weight has shape [16, 784] there but [32, 784] in the model"),
        ("keys", wrong_keys, "it lacks encoder.net.0.weight"),
    ):
        path = tmp_path / f"{name}.ckpt"
        torch.save(bad, path)
        with pytest.raises(SystemExit) as exit_:
            main(tiny_args(tiny_data, tmp_path / "logs", "test", "--config=configs/ae.yaml", f"--ckpt_path={path}"))
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert f"checkpoint {path}: its weights do not fit the AE it describes" in err and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_settings_on_a_machine_without_a_gpu_are_one_line(fitted, tiny_data, tmp_path, capsys):
    gpu_config = tiny_args(tiny_data, tmp_path / "logs", "fit", CONFIG, "--config=configs/trainer/gpu_bf16.yaml")
    code, err = exit_code_and_stderr(main, gpu_config, capsys)
    assert code == 1 and "no usable GPU" in err and "configs/trainer/cpu.yaml" in err, err
    code, err = exit_code_and_stderr(APPS["reduce"], [f"--ckpt_path={fitted['ae']}", "--device=cuda"], capsys)
    assert code == 1 and "--device cuda: this machine has no usable CUDA GPU" in err, err


def test_application_option_mistakes_exit_2_with_the_parsers_message(fitted, tiny_data, capsys):
    data = [f"--data.data_dir={tiny_data}", "--device=cpu"]
    for app, argv in (
        ("anomaly", ["--config=configs/anomaly/ae.yaml", "--percentile=150", *data]),
        ("anomaly", ["--config=configs/anomaly/ae.yaml", "--percentile=-1", *data]),
        ("nll", [f"--ckpt_path={fitted['vae']}", "--samples=0", *data]),
    ):
        code, err = exit_code_and_stderr(APPS[app], argv, capsys)
        assert code == 2 and "error: argument" in err and "must be" in err, err
