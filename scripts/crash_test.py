"""Crash test: runs that survive SIGKILL at any moment.

A deterministic CPU ``aelight fit`` is killed with SIGKILL at ``--kills`` moments drawn from a
seeded schedule and resumed each time with ``--ckpt_path last``. Some kills land inside checkpoint
writes for certain: the fit runs under a driver whose ``torch.save`` writes its bytes in slow
chunks and marks each write's start and end, and the schedule waits for a chosen write to begin.
The others land at a random time after the process starts (imports, data loading, training,
validation, any write). After every kill, every checkpoint and ``result.json`` on disk must load;
at the end, the weights and the optimizer's step count must equal those of an uninterrupted run of
the same command.

Then the same for a sweep: ``aelight sweep`` and all its processes (workers, forkservers, trials)
are killed together at ``--sweep_kills`` random moments and the same command is run again, until
it ends; every point and seed must end completed exactly once.

    python scripts/crash_test.py --data.data_dir data/ --kills 50 --sweep_kills 10 --out crash_report.json

Prints the figures docs/performance.md's reliability section reports, and writes them as JSON.
"""

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aelight.run.folders import newest_checkpoint
from aelight.sweep.results import RESULT_COLUMNS

REPO = Path(__file__).resolve().parent.parent

# Runs ``aelight ARGS`` with torch.save writing its bytes in 8 chunks 15 ms apart, touching
# MARKERS/begun_<n> before the n-th write's first byte and MARKERS/ended_<n> after its last: a kill
# between the two is a kill inside that write.
DRIVER = """
import io, pathlib, sys, time, torch
markers, real_save, count = pathlib.Path(sys.argv[1]), torch.save, [0]

def chunked_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, pathlib.Path)):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data, count[0] = buffer.getvalue(), count[0] + 1
    (markers / f"begun_{count[0]}").touch()
    step = len(data) // 8 + 1
    for start in range(0, len(data), step):
        f.write(data[start:start + step])
        f.flush()
        time.sleep(0.015)
    (markers / f"ended_{count[0]}").touch()

torch.save = chunked_save
from aelight.commands import main
main(sys.argv[2:])
"""


def aelight_driven(markers: Path, args: list[str]) -> subprocess.Popen:
    markers.mkdir(parents=True, exist_ok=True)
    for old in markers.iterdir():
        old.unlink()
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(markers), *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def unreadable_files(folder: Path) -> list[str]:
    """Every checkpoint and result.json under ``folder`` that does not load (hidden temporaries of
    an interrupted write are not files of the run: the next start removes them)."""
    import torch

    from aelight import run_result

    bad = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            if path.suffix == ".ckpt":
                assert "state_dict" in torch.load(path, weights_only=True, map_location="cpu")
            elif path.name.startswith("result") and path.suffix == ".json":
                run_result.read(path)
        except Exception as err:  # noqa: BLE001 - any failure to load is what this test counts
            bad.append(f"{path}: {type(err).__name__}: {err}")
    return bad


def final_state(checkpoint: Path) -> dict:
    import torch

    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    steps = {int(s["step"]) for o in state["optimizer_states"] for s in o["state"].values() if "step" in s}
    return {"weights": state["state_dict"], "global_step": state["global_step"], "optimizer_steps": steps}


def same_run(a: dict, b: dict) -> bool:
    import torch

    return (
        a["global_step"] == b["global_step"]
        and a["optimizer_steps"] == b["optimizer_steps"]
        and a["weights"].keys() == b["weights"].keys()
        and all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    )


def crash_fit(fit_args: list[str], work: Path, kills: int, seed: int, in_write_share: float = 0.5) -> dict:
    """Kills ``aelight fit FIT_ARGS`` (a deterministic CPU run whose logger is named ``crash``)
    ``kills`` times, resuming it each time; a run that reaches its last epoch is compared with the
    uninterrupted one and a new run begins, until the kills are spent. Returns the figures."""
    rng = random.Random(seed)
    reference_logs = work / "reference"
    base = ["fit", *fit_args, "--trainer.logger.init_args.name=crash"]
    started = time.monotonic()
    reference_command = [
        sys.executable,
        "-m",
        "aelight",
        *base,
        f"--trainer.logger.init_args.save_dir={reference_logs}",
    ]
    done = subprocess.run(reference_command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"crash test: the uninterrupted run failed:\n{done.stderr[-3000:]}")
    run_seconds = time.monotonic() - started
    reference = final_state(newest_checkpoint(reference_logs / "crash", "last"))
    figures = {"kills": 0, "kills_inside_writes": 0, "kills_at_random_times": 0, "restarts": 0, "runs_completed": 0,
               "files_checked": 0, "files_failed_to_load": [], "diverged": 0}  # fmt: skip
    markers, logs = work / "markers", work / "killed" / "run0"
    while True:
        resume = ["--ckpt_path=last"] if newest_checkpoint(logs / "crash", "last") else []
        proc = aelight_driven(markers, [*base, f"--trainer.logger.init_args.save_dir={logs}", *resume])
        figures["restarts"] += 1
        if figures["kills"] < kills:
            if rng.random() < in_write_share:  # wait for a chosen write to begin, then kill within its ~120 ms
                target = markers / f"begun_{rng.randint(1, 3)}"
                deadline = time.monotonic() + 3 * run_seconds + 60
                while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.08))
            else:
                deadline = time.monotonic() + rng.uniform(0.0, run_seconds)
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                figures["kills"] += 1
                begun = {p.name.split("_")[1] for p in markers.glob("begun_*")}
                ended = {p.name.split("_")[1] for p in markers.glob("ended_*")}
                figures["kills_inside_writes" if begun - ended else "kills_at_random_times"] += 1
                figures["files_failed_to_load"] += unreadable_files(logs)
                figures["files_checked"] += sum(
                    1 for p in logs.rglob("*") if p.is_file() and not p.name.startswith(".")
                )
                continue
        _, err = proc.communicate()  # it ran to the end (the kills spent, or before its moment came)
        if proc.returncode != 0:
            raise SystemExit(f"crash test: a resume failed ({proc.returncode}):\n{err[-3000:]}")
        final = final_state(newest_checkpoint(logs / "crash", "last"))
        figures["runs_completed"] += 1
        figures["diverged"] += 0 if same_run(final, reference) else 1
        figures["files_failed_to_load"] += unreadable_files(logs)
        figures["global_step"], figures["optimizer_steps"] = final["global_step"], sorted(final["optimizer_steps"])
        if figures["kills"] >= kills:
            return figures
        logs = work / "killed" / f"run{figures['runs_completed']}"  # a new run for the kills left


def crash_sweep(spec: Path, sweep_args: list[str], work: Path, kills: int, seed: int, window_s: float) -> dict:
    """Kills ``aelight sweep SPEC SWEEP_ARGS`` with all its processes ``kills`` times at random
    moments within ``window_s`` seconds of its start and runs the same command again until it ends."""
    rng = random.Random(seed + 1)
    out = work / "sweep"
    command = [sys.executable, "-m", "aelight", "sweep", str(spec), f"--out={out}", *sweep_args]
    figures = {"sweep_kills": 0, "sweep_runs": 0, "sweep_files_failed_to_load": []}
    while True:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        figures["sweep_runs"] += 1
        if figures["sweep_kills"] >= kills:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"crash test: the last sweep run failed ({proc.returncode}):\n{err[-3000:]}")
            break
        deadline = time.monotonic() + rng.uniform(1.0, window_s)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is not None:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"crash test: a sweep run failed ({proc.returncode}):\n{err[-3000:]}")
            break  # it finished before the moment came
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its workers, forkservers and trials at once
        proc.communicate()
        figures["sweep_kills"] += 1
        if (out / "runs").exists():
            figures["sweep_files_failed_to_load"] += unreadable_files(out / "runs")
    rows = list(csv.DictReader((out / "results.csv").open()))
    completed: dict = {}
    for row in rows:
        if row["status"] == "complete":
            point = tuple(
                (k, v)
                for k, v in row.items()
                if k not in RESULT_COLUMNS - {"seed"} and not k.startswith(("val/", "test/"))
            )
            completed[point] = completed.get(point, 0) + 1
    figures["points_completed"] = len(completed)
    figures["points_completed_more_than_once"] = sum(1 for n in completed.values() if n > 1)
    figures["rows_not_complete_or_superseded"] = sum(1 for r in rows if r["status"] not in ("complete", "superseded"))
    return figures


SWEEP_SPEC = """description: the crash test's sweep (two points, two seeds)
config: {config}
grid:
  data.batch_size: [32, 64]
seeds: [0, 1]
metric: val/mse (best)
"""


def fit_options(data_dir: str, epochs: int, limit_batches: int, val_size: int) -> list[str]:
    return [
        "--config=configs/ae.yaml",
        f"--data.data_dir={data_dir}",
        "--data.download=false",
        f"--data.val_size={val_size}",
        "--trainer.deterministic=true",
        "--trainer.accelerator=cpu",
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={limit_batches}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def run(data_dir: str, kills: int, sweep_kills: int, seed: int, epochs: int, limit_batches: int, val_size: int,
        work: Path) -> dict:  # fmt: skip
    options = fit_options(data_dir, epochs, limit_batches, val_size)
    started = time.monotonic()
    figures = {"kills_requested": kills, "seed": seed, "epochs": epochs}
    figures |= crash_fit(options, work, kills, seed)
    figures["fit_seconds"] = round(time.monotonic() - started, 1)
    if sweep_kills:
        spec = work / "crash_sweep.yaml"
        spec.write_text(SWEEP_SPEC.format(config=REPO / "configs" / "ae.yaml"))
        sweep_options = [o for o in options if not o.startswith(("--config=", "--trainer.accelerator"))]
        started = time.monotonic()
        figures |= crash_sweep(spec, ["--workers_per_device=2", *sweep_options], work, sweep_kills, seed, 30.0)
        figures["sweep_seconds"] = round(time.monotonic() - started, 1)
    figures["passed"] = (
        not figures["files_failed_to_load"]
        and figures["diverged"] == 0
        and not figures.get("sweep_files_failed_to_load")
        and figures.get("points_completed", 4 if sweep_kills else 0) == (4 if sweep_kills else 0)
        and not figures.get("points_completed_more_than_once")
        and not figures.get("rows_not_complete_or_superseded")
    )
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data.data_dir", dest="data_dir", default="data/", help="folder holding MNIST/raw")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the fit (at least 50 for the report)")
    parser.add_argument("--sweep_kills", type=int, default=10, help="SIGKILLs of the sweep")
    parser.add_argument("--seed", type=int, default=0, help="the kill schedule's seed")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--limit_batches", type=int, default=4, help="training batches per epoch")
    parser.add_argument("--val_size", type=int, default=1000)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aelight-crash-") as work:
        figures = run(args.data_dir, args.kills, args.sweep_kills, args.seed, args.epochs, args.limit_batches,
                      args.val_size, Path(work))  # fmt: skip
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
