"""lit_mnist: train MNIST-family classifiers with PyTorch Lightning."""

from lit_mnist.callbacks import (
    EpochSpeed,
    MonitoringTensorBoardLogger,
    ParameterHistograms,
    PredictionImages,
    TrainingCurves,
)
from lit_mnist.data import (
    FashionMNISTDataModule,
    KMNISTDataModule,
    MNISTDataModule,
    TensorDataModule,
    TensorImageDataset,
)
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.groups import OptimizerStepAxis, StepGroups, StepProgressBar
from lit_mnist.module import MNISTClassifier
from lit_mnist.networks import CNN, MLP
from lit_mnist.stopping import GracefulInterrupt, LastCheckpoint, NonFiniteLossGuard

__all__ = [
    "CNN",
    "MLP",
    "EpochSpeed",
    "FashionMNISTDataModule",
    "GracefulInterrupt",
    "ImageFolderDataModule",
    "KMNISTDataModule",
    "LastCheckpoint",
    "MNISTClassifier",
    "MNISTDataModule",
    "MonitoringTensorBoardLogger",
    "NonFiniteLossGuard",
    "OptimizerStepAxis",
    "ParameterHistograms",
    "PredictionImages",
    "StepGroups",
    "StepProgressBar",
    "TensorDataModule",
    "TensorImageDataset",
    "TrainingCurves",
]
__version__ = "0.1.0"
