"""A sweep's results: ``results.csv`` (a row per trial and seed) and ``results.md`` (mean ± std over
seeds per setting, best first; what did not complete and why), and the line printed as a trial ends."""

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

from aelight import safe_files
from aelight.sweep.hparams_view import write_hparams_view
from aelight.sweep.shown import shown_option, shown_value
from aelight.sweep.spec import SweepSpec
from aelight.sweep.study import PRUNING_MONITOR, counted, ended, has_drawn, interrupted, setting_of

# results' status of a trial, from Optuna's state
STATUS = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}
# a row's columns that are not the trial's setting
RESULT_COLUMNS = {"trial", "status", "seed", "seconds", "reason", "device", "run"}


def result_rows(study, spec: SweepSpec) -> list[dict]:
    rows = []
    for t in sorted(counted(study), key=lambda t: t.number):
        # a queued trial's setting is fixed before it runs; one that never drew a setting is not the spec's
        params = setting_of(t)
        if t.state != TrialState.COMPLETE and not has_drawn(t, spec):
            continue
        per_seed = t.user_attrs.get("metrics") or {}
        seeds = [params["seed"]] if "seed" in params else spec.seeds
        for seed in seeds:
            metrics = per_seed.get(str(seed), {})
            row = {"trial": t.number, "status": STATUS[t.state.name], "seed": seed}
            row |= {k: v for k, v in params.items() if k != "seed"}
            row |= {m: metrics.get(m) for m in spec.report}
            row |= {"seconds": t.user_attrs.get("seconds"), "reason": reason(t)}
            row |= {"device": t.user_attrs.get("device", ""), "run": t.user_attrs.get("run", "")}
            rows.append(row)
    return superseding(rows, spec)


def superseding(rows: list[dict], spec: SweepSpec) -> list[dict]:
    """An attempt that did not complete a setting and seed which a later trial completed (a sweep
    interrupted and run again) is marked ``superseded``, naming the trial that completed it, so that
    each point and seed has one row that counts."""
    fixed = RESULT_COLUMNS | set(spec.report)
    settled = {(setting_text(r, fixed), r["seed"]): r["trial"] for r in rows if r["status"] == "complete"}
    for row in rows:
        done_by = settled.get((setting_text(row, fixed), row["seed"]))
        if row["status"] != "complete" and done_by is not None and done_by > row["trial"]:
            was = row["reason"] or row["status"]
            row["status"] = "superseded"
            row["reason"] = f"trial {done_by} completed this setting and seed ({was})"
    return rows


def reason(trial) -> str:
    """Why a trial did not complete; for a pruned one, what the pruner saw last."""
    if trial.state.name in ("RUNNING", "WAITING"):  # another worker's, here or on another machine
        return "not finished when these results were written; the same command again adds it"
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        epoch = max(trial.intermediate_values)  # the epoch index Lightning's pruning callback reports
        value = trial.intermediate_values[epoch]
        return f"{PRUNING_MONITOR} {value:.4g} after {epoch + 1} epochs, worse than the median of earlier trials there"
    if interrupted(trial) and "reason" not in trial.user_attrs:
        return "interrupted: its worker stopped without a word (a machine that crashed or was cut off?)"
    return trial.user_attrs.get("reason", "")


def results_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def results_markdown(rows: list[dict], spec: SweepSpec, title: str, options: Optional[list] = None) -> str:
    """Mean ± std over seeds of each reported metric per setting, best first; failures below.
    ``options``: the trial options the sweep's command added to the spec, said under the title."""
    fixed = RESULT_COLUMNS | set(spec.report)
    settings: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] == "complete":
            settings.setdefault(setting_text(row, fixed), []).append(row)
    sign = -1 if spec.direction == "maximize" else 1
    ranked = sorted(settings.items(), key=lambda kv: sign * statistics.fmean(r[spec.metric] for r in kv[1]))
    lines = [f"# {title}", "", f"{spec.metric} ({spec.direction}), mean ± std over seeds.", ""]
    if options:
        lines += [f"Every trial also had {' '.join(options)}.", ""]
    if ranked:
        lines += ["| setting | seeds | " + " | ".join(spec.report) + " |", "|---" * (len(spec.report) + 2) + "|"]
    else:
        lines += ["No trial has completed."]
    for _, group in ranked:
        cells = [mean_std([r[m] for r in group if r[m] is not None]) for m in spec.report]
        lines.append(
            f"| {setting_text(group[0], fixed, shown=True) or '(base)'} | {len(group)} | " + " | ".join(cells) + " |"
        )
    if spec.command == "anomaly" and len(ranked) > 1:  # the one-class protocol's figure: the mean over digits
        protocols: dict[str, list] = {}  # the settings besides the digit (a baseline's distance...), each a protocol
        for key, group in ranked:
            protocols.setdefault(setting_text(group[0], fixed | {"digits"}, shown=True), []).append((key, group))
        lines.append("")
        for protocol, members in protocols.items():
            means = [statistics.fmean(r[spec.metric] for r in group) for _, group in members]
            over = f"{protocol}: mean" if protocol else "Mean"
            lines.append(f"{over} {spec.metric} over the {len(means)} settings: {statistics.fmean(means):.4f}")
            per_seed = protocol_means(members, spec.metric)
            if len(per_seed) > 1:
                seeds = ", ".join(f"{seed}: {mean:.4f}" for seed, mean in per_seed.items())
                lines[-1] += f"; over seeds {mean_std(list(per_seed.values()))} ({seeds})"
    failed = [r for r in rows if r["status"] not in ("complete", "superseded")]
    if failed:
        lines += ["", "Not completed:", ""]
        lines += [
            f"- trial {r['trial']} ({setting_text(r, fixed, shown=True) or 'the base config'}, seed {r['seed']}): "
            f"{r['status']}: {r['reason'] or 'no reason recorded'}"
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def protocol_means(ranked: list, metric: str) -> dict:
    """Per seed, the mean of ``metric`` over every setting (for a one-class sweep, whose settings
    each take one class as normal: the mean AUROC), for each seed with a result in every setting."""
    by_seed: dict = {}
    for _, group in ranked:
        for row in group:
            by_seed.setdefault(row["seed"], []).append(row[metric])
    return {seed: statistics.fmean(v) for seed, v in sorted(by_seed.items()) if len(v) == len(ranked)}


def setting_text(row: dict, fixed: set, shown: bool = False) -> str:
    """A row's options and values; ``shown``: as tables show them, a search's floats to 4 digits
    (results.csv keeps every digit)."""
    if not shown:
        return ", ".join(f"{k}={v}" for k, v in row.items() if k not in fixed)
    return ", ".join(f"{shown_option(k)}={shown_value(v)}" for k, v in row.items() if k not in fixed)


def mean_std(values: list) -> str:
    """Mean ± std to 4 decimals, or to as many more as keep 3 significant digits of the mean and 2 of
    the std: a per-pixel MSE of 0.00335 ± 0.0000042 must not read 0.0034 ± 0.0000."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    places = max(4, decimals_for(mean, 3), decimals_for(std, 2) if std is not None else 0)
    return f"{mean:.{places}f}" if std is None else f"{mean:.{places}f} ± {std:.{places}f}"


def decimals_for(value: float, significant: int) -> int:
    """How many decimals show ``significant`` digits of ``value`` (at most 10; 0 for 0 or a non-finite value)."""
    if not value or not math.isfinite(value):
        return 0
    return min(10, max(0, significant - 1 - math.floor(math.log10(abs(value)))))


def progress_line(study, trial, spec: SweepSpec) -> str:
    """One line when a trial ends: its status, setting and seed, metric or reason, seconds, and how
    many of the spec's trials have ended."""
    setting = setting_text(trial.params, set(), shown=True) or "the base config"
    outcome = f"{spec.metric} {trial.value:.4g}" if trial.state == TrialState.COMPLETE else reason(trial)
    done = sum(ended(t) for t in counted(study))
    seconds = trial.user_attrs.get("seconds")
    return (
        f"aelight sweep: trial {trial.number} {STATUS[trial.state.name]} ({setting}): {outcome}"
        f"{f', {seconds:.0f} s' if seconds is not None else ''} [{done} of {spec.planned_trials()} ended]"
    )


def write_results(study, spec: SweepSpec, out: Path, title: str) -> None:
    rows = result_rows(study, spec)
    safe_files.write_text(out / "results.csv", results_csv(rows), what="results")
    markdown = results_markdown(rows, spec, title, study.user_attrs.get("trials_run_as", {}).get("options"))
    safe_files.write_text(out / "results.md", markdown, what="results")
    fixed = RESULT_COLUMNS | set(spec.report)
    settings = [(shown_option(key), key) for key in dict.fromkeys(k for r in rows for k in r if k not in fixed)]
    view = write_hparams_view(rows, spec, settings, out)
    print(markdown + f"\nwritten to {out}/results.csv and {out}/results.md; the points side by side (HParams): "
          f"tensorboard --logdir {view}; each run's curves and images: tensorboard --logdir {out}/runs")  # fmt: skip
