"""smoothcert: certified adversarial robustness by randomized smoothing.

Three nouns: a base model, a :class:`~smoothcert.noise.Noise`, and the
:class:`~smoothcert.smooth.SmoothedClassifier` built from them; everything else is a function.
"""

from .noise import Gaussian, Laplace, Noise, Uniform, get_noise, list_noises, register_noise
from .smooth import ABSTAIN, Certificate, SmoothedClassifier

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "Certificate",
    "Gaussian",
    "Laplace",
    "Noise",
    "SmoothedClassifier",
    "Uniform",
    "get_noise",
    "list_noises",
    "register_noise",
]
