"""One sweep shared by two machines through a real PostgreSQL server: a throwaway server on
127.0.0.1 (its own data folder, stopped at the end), two `aelight sweep` commands with their own
--machine names standing for two machines, one of them killed mid-trial, and the server stopped
mid-sweep. Needs Debian's postgresql package (installed by .ci/run) and the postgres extra."""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_sweep import rows, write_spec

pytestmark = pytest.mark.postgres

GRID = {"data.batch_size": [16, 32, 64]}  # with seeds 0 and 1: six trials
SMALL = {"data.batch_size": [16, 32]}  # four
BRIEF = ["--data.download=false", "--data.val_size=100", "--trainer.limit_train_batches=2",
         "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         "--trainer.enable_model_summary=false"]  # fmt: skip
SERVER_USER = "postgres"  # the server refuses to run as root: the package's own user runs it then


def server_binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).resolve().parent
    if os.environ.get("AELIGHT_REQUIRE_POSTGRES"):
        pytest.fail("the PostgreSQL server is not installed (apt-get install postgresql)")
    pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql)")


class Server:
    """A PostgreSQL server of its own on 127.0.0.1: its data folder in a temporary folder."""

    def __init__(self):
        self.bin = server_binaries()
        self.folder = tempfile.mkdtemp(prefix="aelight-pg-")
        self.data = os.path.join(self.folder, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_user = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.run("initdb", "-D", self.data, "-U", "aelight", "--auth=trust", "-E", "UTF8")
        self.start()

    def run(self, program: str, *args: str) -> None:
        proc = subprocess.run(
            [*self.as_user, str(self.bin / program), *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"), "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def database(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "aelight", name)
        return f"postgresql://aelight@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    pg = Server()
    yield pg
    pg.close()


def machine_command(spec, out, data, url, name: str, *extra: str) -> list[str]:
    """One machine's `aelight sweep` command line, one worker."""
    return [sys.executable, "-m", "aelight", "sweep", str(spec), f"--out={out}", "--devices=cpu",
            "--workers_per_device=1", f"--storage={url}", f"--machine={name}", f"--data.data_dir={data}",
            *extra]  # fmt: skip


def machine(*args, **kw) -> subprocess.Popen:
    """``machine_command`` started in a process group of its own (the machine, to be killed whole)."""
    return subprocess.Popen(machine_command(*args, **kw), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def finished(proc: subprocess.Popen, timeout: int = 400) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def trials(url: str, name: str = "spec"):
    import optuna

    from aelight.sweep.storage import rdb_storage

    try:  # opened as the sweep opens it: the test looks while the machines may be creating the tables
        return optuna.load_study(study_name=name, storage=rdb_storage(url)).get_trials(deepcopy=False)
    except KeyError:  # the sweep has not made its study yet
        return []


def each_point_completed_once(url: str, grid: dict = GRID) -> None:
    from optuna.trial import TrialState

    done = Counter(
        (t.params["data.batch_size"], t.params["seed"]) for t in trials(url) if t.state == TrialState.COMPLETE
    )
    assert done == {(b, s): 1 for b in grid["data.batch_size"] for s in (0, 1)}, done


def table_of(spec, out, data, url) -> list[dict]:
    """results.csv as `aelight sweep --results` writes it from the shared study."""
    command = [sys.executable, "-m", "aelight", "sweep", str(spec), f"--out={out}", "--results", f"--storage={url}"]
    proc = subprocess.run([*command, f"--data.data_dir={data}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return rows(out)


def test_machines_opening_a_new_database_at_once_all_open_it(server):
    from aelight.sweep.storage import rdb_storage

    url, at_once = server.database("at_once"), 8
    barrier, opened, errors = threading.Barrier(at_once), [], []

    def open_it():
        barrier.wait()  # all create Optuna's tables at the same moment, as machines started together do
        try:
            opened.append(rdb_storage(url))
        except Exception as err:  # noqa: BLE001 - the test lists what failed
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")

    threads = [threading.Thread(target=open_it) for _ in range(at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == at_once, errors
    assert opened[0].get_all_studies() == []  # the tables are whole: the storage reads them


def test_two_machines_share_one_study_each_trial_completes_once(server, tiny_data, tmp_path):
    url, spec = server.database("two_machines"), write_spec(tmp_path, GRID, options=[*BRIEF, "--trainer.max_epochs=1"])
    # started together on a new database: both create Optuna's tables and the study at once
    a = machine(spec, tmp_path / "a", tiny_data, url, "lab-a")
    b = machine(spec, tmp_path / "b", tiny_data, url, "lab-b")
    for proc in (a, b):
        code, err = finished(proc)
        assert code == 0, err[-3000:]
    each_point_completed_once(url)
    table = table_of(spec, tmp_path / "a", tiny_data, url)
    assert len(table) == 6 and {r["status"] for r in table} == {"complete"}
    assert Counter((r["data.batch_size"], r["seed"]) for r in table) == Counter(
        {(str(b), str(s)): 1 for b in GRID["data.batch_size"] for s in (0, 1)}
    )
    assert {r["device"].split()[0] for r in table} == {"lab-a", "lab-b"}  # both machines ran trials


def test_a_machine_killed_mid_trial_has_its_trial_run_again_by_the_other_after_the_heartbeat_limit(
    server, tiny_data, tmp_path
):
    url = server.database("killed")
    # trials long enough (12 brief epochs) that one is seen running on lab-a, even on a loaded machine
    slow = write_spec(tmp_path, SMALL, options=[*BRIEF, "--trainer.max_epochs=12"])
    a = machine(slow, tmp_path / "a", tiny_data, url, "lab-a", "--stale_after=4")
    time.sleep(1)  # lab-a makes the study, lab-b joins it
    b = machine(slow, tmp_path / "b", tiny_data, url, "lab-b", "--stale_after=4")

    def running_on_a():
        return [t for t in trials(url) if t.state.name == "RUNNING" and "seed" in t.params
                and t.user_attrs.get("worker", "").startswith("lab-a:")]  # fmt: skip

    deadline = time.time() + 120
    while not running_on_a():
        assert time.time() < deadline and a.poll() is None
        time.sleep(0.2)
    time.sleep(0.5)  # inside its trial's run
    os.killpg(a.pid, signal.SIGKILL)  # the machine, its workers and its runs, gone without a word
    a.wait()
    (lost,) = running_on_a()
    code, err = finished(b, timeout=600)
    assert code == 0, err[-3000:]
    each_point_completed_once(url, SMALL)
    after = {t.number: t for t in trials(url)}
    assert after[lost.number].state.name == "FAIL"  # failed by its missing heartbeat, its point run by lab-b
    table = table_of(slow, tmp_path / "b", tiny_data, url)
    assert sum(r["status"] == "complete" for r in table) == 4
    (row,) = [r for r in table if r["trial"] == str(lost.number)]
    assert row["status"] == "superseded" and "(interrupted" in row["reason"]  # its point completed on lab-b


def test_a_stopped_database_stops_the_sweep_in_one_line_and_the_same_command_finishes_it_later(
    server, tiny_data, tmp_path
):
    spec = write_spec(tmp_path, SMALL, options=[*BRIEF, "--trainer.max_epochs=1"])
    url, out = server.database("stopped"), tmp_path / "sweep"
    sweep = machine(spec, out, tiny_data, url, "lab-a")
    deadline = time.time() + 180
    while sum(t.state.name == "COMPLETE" for t in trials(url)) < 1:
        assert time.time() < deadline and sweep.poll() is None
        time.sleep(0.3)
    server.stop()
    try:
        code, err = finished(sweep)
    finally:
        server.start()
    lines = [line for line in err.splitlines() if line.startswith("aelight: error:")]
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and f"storage postgresql://aelight@127.0.0.1:{server.port}/stopped" in lines[0]
    completed = [t for t in trials(url) if t.state.name == "COMPLETE"]
    assert 1 <= len(completed) < 4
    for t in completed:  # nothing recorded completed that did not complete: each has its finished runs
        for seed in t.user_attrs["metrics"]:
            assert glob.glob(str(Path(t.user_attrs["run"]) / f"seed{seed}" / "version_0" / "checkpoints" / "best.ckpt"))
    again = subprocess.run(
        machine_command(spec, out, tiny_data, url, "lab-a"), cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    each_point_completed_once(url, SMALL)
    assert {r["status"] for r in rows(out)} <= {"complete", "superseded"}  # what the outage stopped, completed later
