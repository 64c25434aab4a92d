from aelight.data.device_batches import DeviceBatches
from aelight.data.mnist import MNISTDataModule

__all__ = ["MNISTDataModule", "DeviceBatches"]
