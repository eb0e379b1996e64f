"""smoothcert: certified adversarial robustness by randomized smoothing.

Three nouns: a base model, a :class:`~smoothcert.noise.Noise`, and the
:class:`~smoothcert.smooth.SmoothedClassifier` built from them; everything else is a function.
"""

from ._version import __version__ as __version__
from .noise import Gaussian, Laplace, Noise, Uniform, get_noise, list_noises, register_noise
from .smooth import ABSTAIN, Certificate, SmoothedClassifier

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
