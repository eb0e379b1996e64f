"""Training base classifiers for smoothing: methods (losses) by name and one loop."""

from .loop import TrainConfig, noisy_accuracy, train
from .methods import GaussianAugmentation, TrainingMethod, get_method, list_methods, register_method

__all__ = [
    "GaussianAugmentation",
    "TrainConfig",
    "TrainingMethod",
    "get_method",
    "list_methods",
    "noisy_accuracy",
    "register_method",
    "train",
]
