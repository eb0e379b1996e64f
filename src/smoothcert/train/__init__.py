"""Training base classifiers for smoothing: methods (losses) by name and one loop."""

# Importing a method's module registers it (gaussian lives in methods.py).
from .augment import RandomCropFlip, random_crop_flip
from .loop import TrainConfig, learning_rate, noisy_accuracy, train
from .heat import HeatSmoothing, heat_terms
from .macer import Macer, macer_terms, soft_margin
from .methods import GaussianAugmentation, TrainingMethod, get_method, list_methods, register_method
from .smoothadv import SmoothAdv, smoothadv_examples
from .stability import StabilityTraining, consistency_loss, stability_loss

__all__ = [
    "GaussianAugmentation",
    "HeatSmoothing",
    "Macer",
    "RandomCropFlip",
    "SmoothAdv",
    "StabilityTraining",
    "TrainConfig",
    "TrainingMethod",
    "consistency_loss",
    "get_method",
    "heat_terms",
    "learning_rate",
    "list_methods",
    "macer_terms",
    "noisy_accuracy",
    "random_crop_flip",
    "register_method",
    "smoothadv_examples",
    "soft_margin",
    "stability_loss",
    "train",
]
