"""The training commands' parser: its errors in one line, and the callbacks, links and defaults
every run gets (``aelight.run.trainer_cli`` builds LightningCLI with them)."""

import importlib
import os
import re
from typing import Optional

from jsonargparse import dict_to_namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from aelight.callbacks import FiniteLossGuard, PredictionWriter, ReconstructionImages, ResumableRNG
from aelight.data.base import ImageDataModule
from aelight.errors import ArgumentsError
from aelight.training.engine import TrainingEngine

IMAGE_NETWORKS = ("model.init_args.encoder.init_args.image_shape", "model.init_args.decoder.init_args.image_shape")
# Lines of jsonargparse's explanation of an error that say how it searched, not what is wrong
PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
                "Expected a <class 'NoneType'>", "Given value type:", "Given value:")  # fmt: skip
# jsonargparse's words for a key inside a class given by class_path (data, model): one key path instead
NESTED_KEY = re.compile(r"""Parser key "([\w.]+)":\s*Problem with given class_path '[\w.]+':\s*Parser key "([\w.]+)""")


def parser_reason(message: str) -> str:
    """A parser error in one line: its first line and the lines that say what is wrong."""
    first, *rest = [line for line in message.splitlines() if line.strip()] or [""]
    detail = [line.strip(" -") for line in rest]
    reason = " ".join([first, *(line for line in detail if line and not line.startswith(PARSER_NOISE))])
    while NESTED_KEY.search(reason):
        reason = NESTED_KEY.sub(r'Parser key "\1.\2', reason)
    return reason[:500]


class ArgumentsParser(LightningArgumentParser):
    """Lightning's parser raising ``ArgumentsError`` with the reason in one line: jsonargparse
    prints the whole usage, a hundred lines, before the error, and a mistyped key of the data or
    model as the list of every class it tried."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # parsing inside, or debugging
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        raise ArgumentsError(parser_reason(message), prog)


def image_shape_of(data: ImageDataModule) -> list[int]:
    """The shape of the images a data module serves, for the networks (a link's value)."""
    return list(data.image_shape)


def name_default_networks(model) -> None:
    """A model config that names no encoder or decoder gets its class's default networks written
    in (``default_networks``), so that the data's image shape, a link, reaches them too."""
    init = model.get("init_args")
    if init is None or (init.get("encoder") is not None and init.get("decoder") is not None):
        return
    module, _, name = model.class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name, None)
    if not hasattr(model_class, "default_networks"):
        return

    def with_image_shape(network: dict):  # the key a link writes to must be there to be written
        return dict_to_namespace({**network, "init_args": {"image_shape": None, **network.get("init_args", {})}})

    if init.get("encoder") is None:
        init.encoder = with_image_shape(model_class.default_networks()["encoder"])
    if init.get("decoder") is None:
        out_features = init.encoder.get("init_args", {}).get("out_features")
        init.decoder = with_image_shape(model_class.default_networks(out_features)["decoder"])


def add_run_arguments(parser) -> None:
    """The callbacks, links and defaults every training command's parser gets."""
    # Callbacks every run gets, each configurable under its own key (e.g. --checkpoint.monitor).
    parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
    parser.set_defaults(
        {"checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.filename": "best",
         "checkpoint.save_top_k": 1}
    )  # fmt: skip
    # last.ckpt every epoch. Lightning 2.6's save_last writes it only when a top-k checkpoint is
    # written in the same step, i.e. only when val/loss improves: useless for resuming.
    parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
    parser.set_defaults(
        {"last_checkpoint.monitor": None, "last_checkpoint.filename": "last", "last_checkpoint.save_top_k": 1,
         "last_checkpoint.enable_version_counter": False}
    )  # fmt: skip
    parser.add_lightning_class_args(ReconstructionImages, "images")
    parser.add_lightning_class_args(FiniteLossGuard, "finite_loss")
    parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
    parser.add_lightning_class_args(PredictionWriter, "predictions")
    parser.add_lightning_class_args(ResumableRNG, "rng")
    # How optimizer steps are taken (aelight/training/engine.py): its own key, one owner of
    # steps_per_batch, handed to the data module, which serves that many batches at once.
    parser.add_lightning_class_args(TrainingEngine, "engine")
    parser.set_defaults({"engine.steps_per_batch": 8})
    parser.link_arguments("engine.steps_per_batch", "data.init_args.steps_per_batch")
    # The data says what its images are (channels, height, width); every network reads or
    # writes that shape, handed on here, never typed in a config.
    for network in IMAGE_NETWORKS:
        parser.link_arguments("data", network, compute_fn=image_shape_of, apply_on="instantiate")
    # MNIST unless the config or command line names another data module (--data CLASS).
    parser.set_defaults({"data": {"class_path": "aelight.data.MNISTDataModule"}})
    # The model every experiment config starts from: the reference AE trained with Adam, lr 1e-3,
    # fused (one kernel for the whole update, on CPU and CUDA). A config that names another
    # model class keeps this optimizer unless it sets its own.
    adam = {"class_path": "torch.optim.Adam", "init_args": {"lr": 1e-3, "fused": True}}
    parser.set_defaults({"model": {"class_path": "aelight.models.AE", "init_args": {"optimizer": adam}}})
