"""Times a whole ``aelight fit`` (training and the validation pass of every epoch), then tests the best
checkpoint, and prints one JSON object: the seconds ``Trainer.fit`` took and the test metrics.

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
from aelight.engine import TrainingEngine  # noqa: E402


def main() -> None:
    args, sys.argv = sys.argv[1:], sys.argv[:1]  # the CLI reads only ``args``
    cli = build_cli(["--data.download=false", *args], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    (test,) = trainer.test(model, datamodule=datamodule, ckpt_path="best", verbose=False)
    device = trainer.strategy.root_device
    (engine,) = [cb for cb in trainer.callbacks if isinstance(cb, TrainingEngine)]
    graphed = engine.graphed_step
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()})",
                "args": args,
                "precision": trainer.precision,
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "fit_s": fit_s,
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
