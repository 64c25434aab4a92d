"""Encoder and decoder networks: plain ``nn.Module``s that the LightningModules are built from.

Every encoder exposes ``out_features`` (the size of its flat output) and every decoder
``in_features`` (the size of the code it expects), so a model can check that the two fit.
Decoders return logits; the model applies the output link (a sigmoid for pixels in [0, 1]).
"""

from aelight.components.conv import ConvDecoder, ConvEncoder, ConvMapDecoder, ConvMapEncoder
from aelight.components.deskew import Deskewed, deskewed
from aelight.components.mlp import MLP, MLPDecoder, MLPEncoder

__all__ = [
    "MLP",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "ConvMapEncoder",
    "ConvMapDecoder",
    "Deskewed",
    "deskewed",
]
