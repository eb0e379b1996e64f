"""Training base classifiers for smoothing: methods (losses) by name and one loop."""

from .loop import TrainConfig, learning_rate, noisy_accuracy, train
from .methods import GaussianAugmentation, TrainingMethod, get_method, list_methods, register_method

__all__ = [
    "GaussianAugmentation",
    "TrainConfig",
    "learning_rate",
    "TrainingMethod",
    "get_method",
    "list_methods",
    "noisy_accuracy",
    "register_method",
    "train",
]
