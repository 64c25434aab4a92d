"""Times a whole ``aelight fit`` (training and the validation pass of every epoch), then tests the best
checkpoint, and prints one JSON object: the seconds ``Trainer.fit`` took, those of each epoch (its
validation included) and the test metrics.

    python scripts/time_fit.py -c configs/ae.yaml -c configs/trainer/gpu_bf16.yaml --data.data_dir data/

Any ``aelight fit`` argument works; logs go to ``--trainer.logger.init_args.save_dir`` as usual.
"""

import json
import os
import sys
import time

import lightning as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from aelight.cli import build_cli  # noqa: E402
from aelight.training.engine import TrainingEngine  # noqa: E402


class EpochTimer(L.Callback):
    """Seconds of each training epoch, its validation pass included (Lightning validates before
    ``on_train_epoch_end``)."""

    def __init__(self):
        self.seconds: list[float] = []

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._now(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self._now(pl_module) - self._start)


def main() -> None:
    args = sys.argv[1:]
    cli = build_cli(["--data.download=false", *args], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)  # with several DDP processes, each runs this script
    fit_s = time.perf_counter() - start
    (test,) = trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False)
    device = trainer.strategy.root_device
    (engine,) = [cb for cb in trainer.callbacks if isinstance(cb, TrainingEngine)]
    graphed = engine.graphed_step
    if not trainer.is_global_zero:
        return
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()})",
                "args": args,
                "precision": trainer.precision,
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "fit_s": fit_s,
                "epoch_s": timer.seconds,
                "world_size": trainer.world_size,
                "cuda_graph_replays": graphed.replays if graphed is not None else 0,
                "test": test,
                "torch": torch.__version__,
                "lightning": L.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
