"""A variant of a user's own, outside aelight's package: as ``mylab.variants`` would be."""

from torch import Tensor

from aelight.models import AE


class L1AE(AE):
    """The plain autoencoder plus an L1 penalty on the code."""

    def __init__(self, l1: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.l1 = l1

    def loss_terms(self, x: Tensor, out: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = super().loss_terms(x, out)
        terms["l1"] = out["z"].abs().mean()
        terms["loss"] = terms["loss"] + self.l1 * terms["l1"]
        return terms
