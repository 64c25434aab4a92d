"""The crash test's short version: a deterministic fit killed with SIGKILL at five moments of a
seeded schedule (some inside checkpoint writes, for certain), resumed each time with
``--ckpt_path last``, ends at the uninterrupted run's weights and step count with every file on disk
loadable after every kill; a sweep killed twice with all its processes ends with every point and
seed completed once. ``scripts/crash_test.py`` runs it with 50 kills and more."""

import importlib.util

from tests.conftest import REPO


def crash_test_module():
    spec = importlib.util.spec_from_file_location("crash_test", REPO / "scripts" / "crash_test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_fit_killed_at_five_random_moments_resumes_to_the_uninterrupted_weights(tiny_data, tmp_path):
    crash = crash_test_module()
    options = crash.fit_options(str(tiny_data), epochs=6, limit_batches=2, val_size=100)
    figures = crash.crash_fit(options, tmp_path, kills=5, seed=0, in_write_share=0.6)
    assert figures["kills"] == 5 and figures["kills_inside_writes"] >= 1, figures
    assert figures["files_failed_to_load"] == [] and figures["files_checked"] > 0
    assert figures["runs_completed"] >= 1 and figures["diverged"] == 0
    assert figures["optimizer_steps"] == [figures["global_step"]]


def test_a_sweep_killed_with_all_its_processes_ends_with_each_point_completed_once(tiny_data, tmp_path):
    crash = crash_test_module()
    options = crash.fit_options(str(tiny_data), epochs=2, limit_batches=2, val_size=100)
    spec = tmp_path / "crash_sweep.yaml"
    spec.write_text(crash.SWEEP_SPEC.format(config=REPO / "configs" / "ae.yaml"))
    sweep_options = [o for o in options if not o.startswith(("--config=", "--trainer.accelerator"))]
    figures = crash.crash_sweep(spec, ["--workers_per_device=2", *sweep_options], tmp_path, kills=2, seed=0,
                                window_s=15.0)  # fmt: skip
    assert figures["sweep_files_failed_to_load"] == []
    assert figures["points_completed"] == 4 and figures["points_completed_more_than_once"] == 0, figures
    assert figures["rows_not_complete_or_superseded"] == 0
