"""smoothcert: certified adversarial robustness by randomized smoothing.

Three nouns: a base model, a :class:`~smoothcert.noise.Noise`, and the
:class:`~smoothcert.smooth.SmoothedClassifier` built from them (how f is evaluated on noisy copies is
an :class:`~smoothcert.engine.Engine`); everything else is a function.
"""

from ._version import __version__ as __version__
from .certificate import ABSTAIN, Certificate, CertifyAtResult, PlannedCertificate
from .engine import Engine
from .noise import Gaussian, Laplace, Noise, Uniform, get_noise, list_noises, register_noise
from .smooth import SmoothedClassifier

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CertifyAtResult",
    "Engine",
    "Gaussian",
    "Laplace",
    "Noise",
    "PlannedCertificate",
    "SmoothedClassifier",
    "Uniform",
    "get_noise",
    "list_noises",
    "register_noise",
]
