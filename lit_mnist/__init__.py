"""lit_mnist: train MNIST-family classifiers with PyTorch Lightning."""

from lit_mnist.data import FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule
from lit_mnist.module import MNISTClassifier
from lit_mnist.networks import CNN, MLP

__all__ = ["CNN", "MLP", "FashionMNISTDataModule", "KMNISTDataModule", "MNISTClassifier", "MNISTDataModule"]
__version__ = "0.1.0"
