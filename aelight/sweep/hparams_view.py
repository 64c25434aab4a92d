"""A sweep's side-by-side view in TensorBoard's HParams: ``<out>/hparams/``, one session per point
and seed, named by its setting (``lr=0.001, seed=0``), with the spec's metric as the first metric
column, then the other reported metrics that some run logged, and failed, pruned or unfinished
trials listed with their status and reason. Its columns are the sweep's own settings, not every
model argument a run registers for itself (``<out>/runs/`` keeps each run's curves and images).

Written from ``results.csv``'s rows each time the results are (the folder is rebuilt beside the old
one and swapped in), in the sweep's own light process: TensorBoard's protocol buffers, no torch."""

import os
import shutil
import tempfile
import time
from pathlib import Path

from aelight.sweep.shown import shown_value
from aelight.sweep.spec import SweepSpec

FOLDER = "hparams"
# results' status → TensorBoard's session status
SESSION_STATUS = {"complete": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "pruned": "STATUS_ABORTED",
                  "running": "STATUS_RUNNING", "waiting": "STATUS_UNKNOWN"}  # fmt: skip


def session_rows(rows: list[dict]) -> list[dict]:
    """The rows that count (a superseded attempt is history: its point's completed row stands)."""
    return [r for r in rows if r["status"] != "superseded"]


def session_name(row: dict, setting: dict, taken: set) -> str:
    """A session's folder: its setting and seed as the tables show them, made a safe file name."""
    text = ", ".join([*(f"{k}={shown_value(v)}" for k, v in setting.items()), f"seed={row['seed']}"])
    name = "".join("_" if c in '/\\:*?"<>|' or ord(c) < 32 else c for c in text)[:200]
    if name in taken:  # the same point and seed tried twice, neither completed
        name = f"{name} (trial {row['trial']})"
    taken.add(name)
    return name


def metric_columns(rows: list[dict], spec: SweepSpec) -> list[str]:
    """The spec's metric first, then the other reported metrics; only those some row has a value of."""
    ordered = [spec.metric, *(m for m in spec.report if m != spec.metric)]
    return [m for m in ordered if any(isinstance(r.get(m), (int, float)) for r in rows)]


def write_hparams_view(rows: list[dict], spec: SweepSpec, settings: list[str], out: Path) -> Path:
    """Writes ``<out>/hparams/`` for ``rows`` (results.csv's, ``settings`` their setting columns as
    tables show them: ``{shown name: row key}`` order). Returns the folder."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    def summary(tag: str, **content) -> summary_pb2.Summary:
        data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
        return summary_pb2.Summary(value=[value])

    def write(folder: Path, summaries: list) -> None:
        writer = EventFileWriter(str(folder))
        for step_summary in summaries:
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=step_summary))
        writer.close()

    rows = session_rows(rows)
    metrics = metric_columns(rows, spec)
    shown = {name: key for name, key in settings if any(r.get(key) is not None for r in rows)}
    string_columns = {name for name, key in shown.items() if any(isinstance(r.get(key), str) for r in rows)}
    infos = [
        api_pb2.HParamInfo(
            name=name,
            type=api_pb2.DataType.Value("DATA_TYPE_STRING" if name in string_columns else "DATA_TYPE_FLOAT64"),
            differs=True,
        )
        for name in [*shown, "seed"]
    ]
    infos += [
        api_pb2.HParamInfo(name=name, type=api_pb2.DataType.Value("DATA_TYPE_STRING")) for name in ("status", "reason")
    ]
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    )
    out.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=out))
    write(building, [summary(metadata.EXPERIMENT_TAG, experiment=experiment)])
    taken: set = set()
    for row in rows:
        setting = {name: row.get(key) for name, key in shown.items()}
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in [
            *setting.items(),
            ("seed", row["seed"]),
            ("status", row["status"]),
            ("reason", row.get("reason") or ""),
        ]:
            if value is None:
                continue
            if name in string_columns or isinstance(value, str):
                start.hparams[name].string_value = str(value)
            else:
                start.hparams[name].number_value = float(value)
        summaries = [summary(metadata.SESSION_START_INFO_TAG, session_start_info=start)]
        summaries += [
            summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=m, simple_value=float(row[m]))])
            for m in metrics
            if isinstance(row.get(m), (int, float))
        ]
        if row["status"] not in ("running", "waiting"):
            end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(SESSION_STATUS[row["status"]]),
                                                 end_time_secs=time.time())  # fmt: skip
            summaries.append(summary(metadata.SESSION_END_INFO_TAG, session_end_info=end))
        write(building / session_name(row, setting, taken), summaries)
    final = out / FOLDER
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-old-", dir=out))
        os.replace(final, old / FOLDER)
    os.replace(building, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
