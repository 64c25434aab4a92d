"""A sweep's spec: the YAML file read into a typed ``SweepSpec``, every key checked when it loads."""

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from aelight.errors import ConfigError

# applications that a trial runs on its best checkpoint after fit (their report.json holds the metrics)
APPLIED = ("features", "reduce", "denoise", "nll", "generate")
COMMANDS = ("fit", "anomaly", *APPLIED)
APP_DATA_OPTIONS = ("--data.data_dir", "--data.val_size")  # the fit options an application takes too
# metrics (the name after the stage) that are better higher; any other is better lower
HIGHER_IS_BETTER = {"auroc", "mean_auroc", "f1", "precision", "recall", "psnr", "ssim", "elbo", "denoise_psnr",
                    "denoise_ssim", "accuracy", "logistic_regression_test_accuracy", "knn5_test_accuracy",
                    "knn5_val_accuracy", "autoencoder_minus_filter_psnr_db", "mean_top_class_confidence"}  # fmt: skip
# an application's options by which its trials train no network: a baseline, or a network untrained
NO_TRAINING_OPTIONS = ("--baseline", "--untrained")
# A fit's validation and training metrics have two values in a run, its best epoch's and its last's:
# a spec names which, ``val/loss (best)`` or ``val/loss (last)``. Test and report metrics have one.
FIT_METRICS = ("val/", "train/")
WHICH_VALUES = ("best", "last")
# settings that do not change how a trial runs: a continued sweep may give others (a trial keeps
# every metric value of its runs, so its table can report any of them)
NOT_TRIAL_SETTINGS = ("path", "description", "devices", "workers_per_device", "trials", "report")


@dataclasses.dataclass
class SweepSpec:
    """What a sweep runs. ``grid``: {option: [values]}; ``search``: {option: {low, high, log, int}
    or {choices}}; ``link``: {option: swept option, or {from: option, times: k}}; ``config_files``:
    each config as the spec writes it -> the file it names (beside the spec, else in the current
    folder)."""

    path: str
    command: str = "fit"
    config: list = dataclasses.field(default_factory=list)
    grid: dict = dataclasses.field(default_factory=dict)
    search: dict = dataclasses.field(default_factory=dict)
    link: dict = dataclasses.field(default_factory=dict)
    trials: Optional[int] = None
    seeds: list = dataclasses.field(default_factory=lambda: [42])
    metric: str = "test/mse"
    direction: str = "minimize"
    report: list = dataclasses.field(default_factory=list)
    options: list = dataclasses.field(default_factory=list)
    app_options: list = dataclasses.field(default_factory=list)
    prune: Optional[bool] = None
    description: str = ""
    devices: Any = None
    workers_per_device: Optional[int] = None
    config_files: dict = dataclasses.field(default_factory=dict)

    def gives(self, name: str) -> bool:
        """Whether its options or application options give the option ``name`` (``--key``)."""
        return name in (o.split("=", 1)[0] for o in [*self.options, *self.app_options])

    @property
    def trains(self) -> bool:
        """Whether its trials train: False for an application's baseline (``--baseline``) or untrained
        network (``--untrained``), which its trials run alone, on the data the options give."""
        return not any(self.gives(name) for name in NO_TRAINING_OPTIONS)

    def settings(self) -> dict:
        """What decides how its trials run, as a study records it (see ``check_same_trials``)."""
        kept = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_TRIAL_SETTINGS}
        return {k: v for k, v in kept.items() if not (k == "prune" and v is None)}

    @property
    def varied(self) -> set:
        return {*self.grid, *self.search}

    def planned_trials(self) -> int:
        """How many trials the spec asks for: the search's number, or every grid point with every seed."""
        if self.search:
            return self.trials
        return math.prod(len(v) for v in self.grid.values()) * len(self.seeds)

    def planned_points(self) -> list[dict]:
        """A grid's trials: each point with each seed, as Optuna keeps their parameters."""
        names = [*self.grid, "seed"]
        values = [[encode(v) for v in self.grid[k]] for k in self.grid] + [self.seeds]
        return [dict(zip(names, combination)) for combination in itertools.product(*values)]

    def swept_values(self, option: str) -> list:
        """The values a grid gives an option, or a search's choices or bounds."""
        if option in self.grid:
            return self.grid[option]
        space = self.search[option]
        return space["choices"] if "choices" in space else [space["low"], space["high"]]


def load_spec(path: str) -> SweepSpec:
    """The spec at ``path``, checked: one ConfigError naming the first thing wrong."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as err:
        raise ConfigError(f"sweep spec {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep spec {path}: not valid YAML ({str(err).splitlines()[0]})") from None

    def wrong(message: str) -> ConfigError:
        return ConfigError(f"sweep spec {path}: {message}")

    if not isinstance(raw, dict):
        raise wrong(f"expected a mapping of settings, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(SweepSpec)} - {"path", "config_files"}
    unknown = set(raw) - known
    if unknown:
        raise wrong(f"unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    spec = SweepSpec(path=str(path), command=raw.get("command", "fit"))
    if spec.command not in COMMANDS:
        raise wrong(f"command must be one of {COMMANDS}, got {spec.command!r}")
    for key in ("grid", "search"):
        if not isinstance(raw.get(key) or {}, dict):
            raise wrong(f"{key} must be a mapping of options, e.g. {key}: {{lr: ...}}")
    spec.config = as_list(raw.get("config"))
    spec.grid = raw.get("grid") or {}
    spec.search = raw.get("search") or {}
    spec.seeds = as_list(raw.get("seeds")) or [42]
    spec.options = [str(o) for o in as_list(raw.get("options"))]
    spec.app_options = [str(o) for o in as_list(raw.get("app_options"))]
    spec.prune, spec.description = raw.get("prune"), raw.get("description") or ""
    spec.devices, spec.workers_per_device = raw.get("devices"), raw.get("workers_per_device")
    if spec.app_options and spec.command not in APPLIED:
        raise wrong(f"app_options are for a command among {APPLIED}, not {spec.command}")
    if not spec.trains and spec.command not in ("anomaly", "reduce", "features"):
        raise wrong(f"{' / '.join(NO_TRAINING_OPTIONS)} are options of anomaly, reduce and features")
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise wrong(f"grid.{key} must be a non-empty list of values")
    for key, space in spec.search.items():
        if not isinstance(space, dict) or not ({"low", "high"} <= set(space) or "choices" in space):
            raise wrong(f"search.{key} needs low and high (and optional log, int), or choices")
    spec.link = raw.get("link") or {}
    if not isinstance(spec.link, dict) or not all(_is_link(link, spec.varied) for link in spec.link.values()):
        raise wrong(
            "link maps an option to the grid or search option whose value it takes "
            "(or {from: option, times: k}: k times its value), e.g. "
            "link: {model.init_args.decoder.init_args.in_features: model.init_args.encoder.init_args.out_features}"
        )
    for target, link in spec.link.items():  # k times a value: a number (k times a string would repeat it)
        if isinstance(link, dict) and not all(map(_is_number, spec.swept_values(link["from"]))):
            raise wrong(f"link {target} takes a multiple of {link['from']}, not a number")
    spec.trials = raw.get("trials")
    if spec.search and (not isinstance(spec.trials, int) or isinstance(spec.trials, bool) or spec.trials < 1):
        raise wrong("a search needs trials: N, a whole number of settings to try")
    untrained = spec.gives("--untrained")
    if untrained and spec.command != "anomaly":
        raise wrong(
            f"--untrained in a sweep is anomaly's (the config's network, drawn from the trial's seed); "
            f"aelight {spec.command} --untrained re-draws a trained run's network: run it on a sweep's checkpoints"
        )
    if (spec.trains or untrained) and not spec.config and "config" not in spec.grid:
        raise wrong("name the base config(s) with config: or grid: {config: [...]}")
    for config in [*spec.config, *spec.grid.get("config", [])]:
        found = config_file(path, config) if isinstance(config, str) else None
        if found is None:
            raise wrong(
                f"config file {config} not found (looked beside the spec, in "
                f"{Path(path).parent.absolute()}, then in the current folder)"
            )
        spec.config_files[config] = found
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds):
        raise wrong("seeds must be whole numbers")
    spec.metric = raw.get("metric", "auroc" if spec.command == "anomaly" else "test/mse")
    if "direction" in raw:
        spec.direction = raw["direction"]
    else:  # what is better by its name: a score up, an error down
        name = metric_name(str(spec.metric))[0].rsplit("/", 1)[-1].removesuffix("_best")
        spec.direction = "maximize" if name in HIGHER_IS_BETTER else "minimize"
    if spec.direction not in ("minimize", "maximize"):
        raise wrong("direction must be minimize or maximize")
    spec.report = as_list(raw.get("report")) or [spec.metric]
    if spec.metric not in spec.report:
        spec.report.insert(0, spec.metric)
    if not all(isinstance(m, str) for m in spec.report):
        raise wrong("metric and report name logged metrics, e.g. test/mse")
    for name in spec.report:
        logged, which = metric_name(name)
        if logged.startswith(FIT_METRICS) and not logged.endswith("_best") and which is None:
            key = "metric" if name == spec.metric else "report"
            raise wrong(
                f"{key}: {name} has two values in a run, its best epoch's and its last's; write "
                f"'{name} (best)' or '{name} (last)'"
            )
        if which is not None and not logged.startswith(FIT_METRICS):
            raise wrong(f"{name}: (best) and (last) name a value of a fit's val/ or train/ metric; {logged} has one")
    return spec


def metric_name(name: str) -> tuple[str, Optional[str]]:
    """A spec's metric as (the logged name, which value: best, last or None): ``val/loss (best)``."""
    logged, _, which = name.partition(" (")
    if which.removesuffix(")") in WHICH_VALUES and which.endswith(")"):
        return logged, which.removesuffix(")")
    return name, None


def config_file(spec_path: str, config: str) -> Optional[str]:
    """The file a spec's ``config:`` entry names: relative to the spec file's folder, then to the
    current folder (or absolute); None if neither holds it."""
    for candidate in (Path(spec_path).parent / config, Path(config)):
        if candidate.is_file():
            return str(candidate)
    return None


def _is_link(link, varied: set) -> bool:
    """A link's value: a swept option's name, or ``{from: option, times: k}`` (k a number)."""
    if isinstance(link, str):
        return link in varied
    return (
        isinstance(link, dict)
        and set(link) <= {"from", "times"}
        and link.get("from") in varied
        and _is_number(link.get("times", 1))
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def linked_value(link, params: dict):
    """The value a linked option takes from the trial's ``params``: the swept option's value, or k
    times it (a VAE's encoder gives twice the latent size: ``{from: <decoder's input>, times: 2}``)."""
    if isinstance(link, str):
        return params[link]
    value = params[link["from"]] * link.get("times", 1)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def encode(value):
    """A grid value as Optuna keeps it: plain values as they are, lists and mappings as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def option(key: str, value) -> str:
    """An aelight option from a grid or search value: strings (JSON-encoded lists too) as they are."""
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


# Options that say where or how one machine runs a trial, not what the trial computes: its data
# folder, and its steps replayed as CUDA graphs (the eager steps' arithmetic; nothing on a CPU).
# The commands and machines of one study may differ in them.
MACHINE_OPTIONS = ("--data.data_dir", "--engine.cuda_graph")


def trial_options(extra: list[str], keep_machine: bool = False) -> list[str]:
    """The trial options of a sweep's command line, each as --key=value, without ``MACHINE_OPTIONS``
    (unless ``keep_machine``)."""
    options, i = [], 0
    while i < len(extra):
        given = extra[i]
        if "=" not in given and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            given, i = f"{given}={extra[i + 1]}", i + 1
        if keep_machine or not given.startswith(MACHINE_OPTIONS):
            options.append(given)
        i += 1
    return options
