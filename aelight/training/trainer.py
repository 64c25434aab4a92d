"""Lightning's Trainer with its batch limits typed for the command line: a whole number means that
many batches, a fraction that share of them.

Lightning annotates ``limit_*_batches`` as ``Union[float, int]``, which jsonargparse resolves to a
float: ``--trainer.limit_train_batches 1`` arrived as 1.0, "100% of the batches", so a one-batch
check trained a whole epoch."""

from typing import Optional, Union

from jsonargparse.typing import NonNegativeFloat
from lightning.pytorch import Trainer as LightningTrainer

# int first: "1" is one batch. A plain int, not NonNegativeInt: jsonargparse dumps a value of
# Union[NonNegativeInt, NonNegativeFloat] through the int type, so 0.5 was saved as 0 in config.yaml.
BatchLimit = Optional[Union[int, NonNegativeFloat]]


class Trainer(LightningTrainer):
    """``lightning.pytorch.Trainer``; only the types its parser reads for the batch limits differ."""

    def __init__(
        self,
        *,
        limit_train_batches: BatchLimit = None,
        limit_val_batches: BatchLimit = None,
        limit_test_batches: BatchLimit = None,
        limit_predict_batches: BatchLimit = None,
        overfit_batches: Union[int, NonNegativeFloat] = 0.0,
        **kwargs,
    ):
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches,
            **kwargs,
        )
