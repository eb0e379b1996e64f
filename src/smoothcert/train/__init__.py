"""Training base classifiers for smoothing: methods (losses) by name and one loop.

The loop (:func:`run_epochs`) is also the one denoisers (``smoothcert.denoise.train_denoiser``) and
super-resolution U-Nets (``smoothcert.train.superres.train_superres``) train in.
"""

# Importing a method's module registers it (gaussian lives in methods.py).
from .augment import RandomCropFlip, random_crop_flip
from .heat import HeatSmoothing, heat_terms
from .lipschitz_margin import LipschitzMargin, head_lipschitz, margin_logits
from .loop import BatchSource, EpochCheckpoint, TrainConfig, TrainStep, learning_rate, noisy_accuracy, run_epochs, train
from .macer import Macer, macer_terms, soft_margin
from .methods import GaussianAugmentation, TrainingMethod, get_method, list_methods, method_record, register_method
from .smoothadv import SmoothAdv, smoothadv_examples
from .stability import ConsistencyRegularization, StabilityTraining, consistency_loss, stability_loss

__all__ = [
    "BatchSource",
    "ConsistencyRegularization",
    "EpochCheckpoint",
    "GaussianAugmentation",
    "HeatSmoothing",
    "LipschitzMargin",
    "Macer",
    "RandomCropFlip",
    "SmoothAdv",
    "StabilityTraining",
    "TrainConfig",
    "TrainStep",
    "TrainingMethod",
    "consistency_loss",
    "get_method",
    "head_lipschitz",
    "heat_terms",
    "learning_rate",
    "list_methods",
    "macer_terms",
    "margin_logits",
    "method_record",
    "noisy_accuracy",
    "random_crop_flip",
    "register_method",
    "run_epochs",
    "smoothadv_examples",
    "soft_margin",
    "stability_loss",
    "train",
]
