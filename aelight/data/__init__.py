from aelight.data.device_batches import DeviceBatches
from aelight.data.folder import ImageFolderDataModule
from aelight.data.mnist import MNISTDataModule

__all__ = ["MNISTDataModule", "ImageFolderDataModule", "DeviceBatches"]
