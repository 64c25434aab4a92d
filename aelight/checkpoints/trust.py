"""The trust boundary of checkpoints: a checkpoint is data, never code.

A checkpoint written by ``aelight fit`` records the class paths of its model, networks, optimizer
and scheduler. Lightning's CLI and ``load_from_checkpoint`` import whatever module such a path
names, so a crafted file could make aelight run any module on ``sys.path``. Every checkpoint is
therefore loaded weights-only (no pickled objects) and every class path it names, at any depth,
is checked against an allow-list *before* anything is imported:

- aelight's own models, networks and data module (under any of their import spellings),
- ``torch.optim`` optimizers and ``torch.optim.lr_scheduler`` schedulers,
- ``lightning.pytorch.cli.instantiate_module``, the instantiator LightningCLI records,
- modules the user names in ``AELIGHT_TRUSTED_MODULES`` (comma-separated, e.g. ``mylab.variants``)
  for variants of their own,
- the classes that the command's own config or command line names (``aelight test --model
  mylab.variants.L1AE --ckpt_path best``): the user chose to run them already.

Configs (YAML files and command-line values) are not checked: a ``class_path`` there is code the
user chose to run, like a Python script.
"""

import collections.abc
import functools
import importlib
import inspect
import os
import re
import types
import typing
from typing import Literal, Optional, Union

import torch

from aelight.checkpoints.io import CheckpointError, SafeCheckpointIO

TRUSTED_MODULES_ENV = "AELIGHT_TRUSTED_MODULES"
CLASS_PATH_KEYS = ("class_path", "_class_path", "_instantiator")
# what each hyperparameter dict describes when it names no class itself
HPARAM_KEYS = {"hyper_parameters": "aelight.models.AE", "datamodule_hyper_parameters": "aelight.data.MNISTDataModule"}
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
PLAIN_TYPES = (str, int, float, bool, type(None))
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint names a class outside the allow-list."""


# aelight's classes a checkpoint may name, by the module that defines them, and the packages that
# export them (their other spellings). Data, so that checking a checkpoint imports no model: a new
# model or network is added here too (tests/test_trust_boundary.py holds this table to the packages).
AELIGHT_CLASSES = {
    "aelight.models.autoencoder": ("AE",),
    "aelight.models.contractive": ("ContractiveAE",),
    "aelight.models.denoising": ("DenoisingAE",),
    "aelight.models.restoration": ("RestorationAE",),
    "aelight.models.sparse": ("SparseAE",),
    "aelight.models.umap": ("UMAPAE",),
    "aelight.models.vae": ("VAE",),
    "aelight.models.hierarchical_vae": ("HierarchicalVAE",),
    "aelight.models.wta": ("WTAAE",),
    "aelight.components.mlp": ("MLPEncoder", "MLPDecoder", "MLP"),
    "aelight.components.conv": ("ConvEncoder", "ConvDecoder", "ConvMapEncoder", "ConvMapDecoder"),
    "aelight.components.deskew": ("Deskewed",),
    "aelight.data.mnist": ("MNISTDataModule",),
    "aelight.data.folder": ("ImageFolderDataModule",),
}
EXPORTED_BY = {"aelight.models": ("aelight.models", "aelight"), "aelight.components": ("aelight.components",),
               "aelight.data": ("aelight.data", "aelight")}  # fmt: skip


@functools.lru_cache(maxsize=1)
def allowed_classes() -> dict[str, str]:
    """Every allowed class path, and the path of the class it names (its defining module's)."""
    table: dict[str, str] = {}
    for module, names in AELIGHT_CLASSES.items():
        packages = next(spellings for package, spellings in EXPORTED_BY.items() if module.startswith(package + "."))
        for name in names:
            table.update(dict.fromkeys((f"{m}.{name}" for m in (module, *packages)), f"{module}.{name}"))
    for name, obj in vars(torch.optim).items():
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            table.update(dict.fromkeys(_spellings(obj, "torch.optim"), f"{obj.__module__}.{name}"))
    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for name, obj in vars(torch.optim.lr_scheduler).items():
        if isinstance(obj, type) and issubclass(obj, schedulers):
            table.update(dict.fromkeys(_spellings(obj, "torch.optim.lr_scheduler"), f"{obj.__module__}.{name}"))
    table[LIGHTNING_INSTANTIATOR] = LIGHTNING_INSTANTIATOR  # named by LightningCLI, imported by Lightning itself
    return table


def _spellings(cls: type, *packages: str) -> set[str]:
    return {f"{module}.{cls.__name__}" for module in (cls.__module__, *packages)}


def allowed_class(class_path: str) -> Optional[type]:
    """The class an allowed aelight or torch class path names, imported (allowed classes only)."""
    target = allowed_classes().get(class_path)
    if target is None or target == LIGHTNING_INSTANTIATOR:
        return None
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def trusted_modules() -> tuple[str, ...]:
    names = os.environ.get(TRUSTED_MODULES_ENV, "")
    return tuple(n.strip() for n in names.split(",") if n.strip())


def is_allowed(class_path: str, named: frozenset = frozenset()) -> bool:
    """``named``: the class paths the running command's own config names, trusted like it."""
    if class_path in allowed_classes() or class_path in named:
        return True
    module = class_path.rpartition(".")[0]
    return any(module == m or module.startswith(m + ".") for m in trusted_modules())


def _is_plain_type(tp) -> bool:
    """True for annotations whose values are data (numbers, strings, lists of them...), not code."""
    if tp in PLAIN_TYPES or tp is inspect.Parameter.empty:
        return tp is not inspect.Parameter.empty
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType):
        return all(_is_plain_type(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict, collections.abc.Sequence, collections.abc.Mapping):
        return all(_is_plain_type(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return False


def _data_keys(class_path: Optional[str]) -> set[str]:
    """Arguments of an allowed class that its signature types as plain data."""
    cls = allowed_class(class_path) if class_path else None
    keys: set[str] = set()
    for klass in inspect.getmro(cls) if isinstance(cls, type) else ():
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an unresolvable hint is simply not trusted as data
            continue
        keys |= {k for k, tp in hints.items() if _is_plain_type(tp)}
    return keys


def _untrusted(
    value, where: str, code: bool, owner: Optional[str] = None, named: frozenset = frozenset()
) -> Optional[tuple[str, str]]:
    """The first (class path, location) in ``value`` that is not allowed. ``code``: this value is
    typed as something other than plain data, so a dotted string there could be imported.
    ``owner``: the class whose arguments a dict holds, when it names none itself."""
    if isinstance(value, dict):
        for key in CLASS_PATH_KEYS:
            path = value.get(key)
            if path is not None and (not isinstance(path, str) or not is_allowed(path, named)):
                return str(path), f"{where}.{key}" if where else key
        owner = value.get("_class_path") or value.get("class_path") or owner
        data = _data_keys(owner) if isinstance(owner, str) else set()
        for key, item in value.items():
            if key in CLASS_PATH_KEYS:
                continue
            found = _untrusted(item, f"{where}.{key}" if where else str(key), code or str(key) not in data, named=named)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _untrusted(item, f"{where}[{i}]", code, named=named)
            if found:
                return found
    elif isinstance(value, str) and code and DOTTED.match(value) and not is_allowed(value, named):
        return value, where
    return None


def check_classes(checkpoint: dict, path, named: frozenset = frozenset()) -> None:
    """Raises ``UntrustedCheckpointError`` if the checkpoint names a class outside the allow-list
    and outside ``named`` (the classes the running command's own config names)."""
    for key, owner in HPARAM_KEYS.items():
        hparams = checkpoint.get(key)
        if hparams is None:
            continue
        if isinstance(hparams, dict):
            found = _untrusted(hparams, "", code=False, owner=owner, named=named)
        else:
            found = (repr(hparams), key)
        if found:
            class_path, where = found
            raise UntrustedCheckpointError(
                f"checkpoint {path} refused: it names {class_path!r} (at {key}.{where}), which is not an aelight, "
                f"torch.optim or torch.optim.lr_scheduler class, so nothing was imported from it. If it is a "
                f"class of your own, name it in the command's config or options (e.g. --model for a model) or its "
                f"module in {TRUSTED_MODULES_ENV}"
            )


def load_checkpoint(path, map_location="cpu", weights_only: bool = True, named: frozenset = frozenset()) -> dict:
    """A checkpoint loaded weights-only (or as asked), its class paths checked (``named``: classes the
    running command's own config names, trusted too); clear errors otherwise."""
    checkpoint = SafeCheckpointIO().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
    check_classes(checkpoint, path, named)
    return checkpoint


def named_classes(config) -> frozenset:
    """Every ``class_path`` value in a command's parsed config (nested dicts and lists)."""
    found: set[str] = set()
    stack = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("class_path"), str):
                found.add(value["class_path"])
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return frozenset(found)
