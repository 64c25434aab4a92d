"""A checkpoint becomes a model one way, for every command: ``fit`` / ``test`` reloading what they
trained, the applications, ``aelight export`` and ``init_weights``.

The file is loaded weights-only and every class path it names is checked against
``aelight.checkpoints.trust``'s allow-list before anything it names is imported; the classes that
the command's own config and options name (``named``) are trusted too, as the user chose to run
them already. Speed settings that old checkpoints kept among the model's arguments (now the
training engine's) are left out."""

import importlib
from typing import Optional

import yaml
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import instantiate_module

from aelight.checkpoints import trust
from aelight.checkpoints.io import check_weights_fit, model_arguments, weight_shapes
from aelight.errors import AelightError
from aelight.models import AE
from aelight.run.folders import run_config_of


def load_model(ckpt: str, device: str, checkpoint: Optional[dict] = None, named: frozenset = frozenset()) -> AE:
    """Any aelight model from a checkpoint of ``aelight fit``, its weights loaded, in eval mode on
    ``device`` (``checkpoint``: the file already loaded with ``trust.load_checkpoint``)."""
    checkpoint = checkpoint if checkpoint is not None else trust.load_checkpoint(ckpt, named=named)
    model = build_model(checkpoint, ckpt, named)
    check_weights_fit(model, weight_shapes(checkpoint["state_dict"]), f"checkpoint {ckpt}")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval().to(device)


def load_run(ckpt: str, device: str, named: frozenset = frozenset()) -> tuple[AE, dict]:
    """A checkpoint's model (``load_model``) and its run's data settings (for
    ``aelight.run.run_data.run_data``), from one read of the file."""
    checkpoint = trust.load_checkpoint(ckpt, named=named)
    return load_model(ckpt, device, checkpoint, named), run_data_settings(checkpoint)


def run_data_settings(checkpoint: dict) -> dict:
    """The data module's arguments that a checkpoint's run recorded."""
    return dict(checkpoint.get("datamodule_hyper_parameters") or {})


def load_untrained(ckpt: str, device: str) -> tuple[AE, dict, int]:
    """A checkpoint's model at the initial weights its run started from: its networks built as the
    file says after seeding every generator with the run's seed (``seed_everything`` of the run's
    ``config.yaml``, beside its checkpoints folder), as ``aelight fit`` seeded them before building.
    Also the run's data settings and its seed number."""
    checkpoint = trust.load_checkpoint(ckpt)
    config_file = run_config_of(ckpt)
    try:
        seed = yaml.safe_load(config_file.read_text()).get("seed_everything")
    except (OSError, yaml.YAMLError, AttributeError):
        seed = None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise AelightError(
            f"--untrained: no seed found in {config_file} (the run's saved config, whose seed_everything drew the "
            "initial weights); give the checkpoint of an `aelight fit` run whose folder holds config.yaml"
        )
    seed_everything(seed, verbose=False)
    model = build_model(checkpoint, ckpt)
    return model.eval().to(device), run_data_settings(checkpoint), seed


def build_model(checkpoint: dict, ckpt: str, named: frozenset = frozenset()) -> AE:
    """The model a checked checkpoint names, built from its arguments, its weights as initialised."""
    model_class = checkpoint_model_class(checkpoint, ckpt, named)
    hparams = checkpoint.get("hyper_parameters") or {}
    config = model_arguments(hparams)
    try:
        if "_instantiator" in hparams:  # written through the CLI: networks and optimizer as class paths
            return instantiate_module(model_class, config)
        return model_class(**{k: v for k, v in config.items() if k != "_class_path"})
    except Exception as err:  # noqa: BLE001 - its arguments do not fit this version's model class
        lines = str(err).splitlines()
        reason = next(
            (line.strip(" -") for line in lines if "argument" in line or "key" in line), lines[0] if lines else ""
        )
        raise AelightError(
            f"checkpoint {ckpt} does not fit this version of aelight's {model_class.__name__} ({reason}); "
            "load it with the aelight version that wrote it"
        ) from None


def checkpoint_model_class(checkpoint: dict, path, named: frozenset = frozenset()) -> type:
    """The aelight model class a checked checkpoint names (the plain AE if it names none)."""
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path", "aelight.models.AE")
    cls = trust.allowed_class(class_path)
    if cls is None and trust.is_allowed(class_path, named):  # a user's trusted module, or a class they named
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, AE)):
        raise trust.UntrustedCheckpointError(
            f"checkpoint {path} names the model class {class_path!r}, not an aelight model"
        )
    return cls
