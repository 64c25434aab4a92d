from aelight.callbacks.finite_loss import FiniteLossGuard
from aelight.callbacks.images import ReconstructionImages
from aelight.callbacks.predictions import PredictionWriter
from aelight.callbacks.rng import ResumableRNG

__all__ = ["FiniteLossGuard", "ReconstructionImages", "PredictionWriter", "ResumableRNG"]
