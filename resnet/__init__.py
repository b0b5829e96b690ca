"""A CIFAR-10 ResNet studio: the published ResNet, a fast trainer, evaluation and prediction."""

from .classifier import Classifier
from .constants import CLASSES, MEAN, STD
from .model import build_model, count_parameters
from .weights import load_weights, save_weights

__all__ = ["CLASSES", "MEAN", "STD", "Classifier", "build_model", "count_parameters", "load_weights", "save_weights"]
