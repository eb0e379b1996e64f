"""Denoised smoothing: make a pretrained classifier robust without retraining it.

``Denoised(classifier, denoiser)`` is a base classifier like any other (certify, predict, attack);
the classifier is never trained (constructing the wrapper leaves it as it is; ``freeze=True`` freezes
it in place). What a network was trained for travels in its checkpoint's :class:`DenoiserMeta`,
never on the network: pass it on (``trained_for=trained_noise(meta)``, ``training_ladder=meta.ladder``,
or :func:`denoiser_for_noise`). Denoisers come in two families:

* one network per noise and sigma (``dncnn``), trained with ``mse`` or the classifier-guided
  ``stability`` / ``classification`` losses of Salman et al. 2020 (full or query access);
* one score network ``s(y, sigma)`` (``scorenet``) trained once by multi-scale denoising score
  matching (``dsm``), used as a one-step Tweedie denoiser (Gaussian noise) or a multi-step
  annealed MAP denoiser (Gaussian, Laplace, uniform noise), after the score-based denoised
  smoothing paper.

Example (a classifier ``f`` for MNIST, one score network for every noise)::

    score = build_denoiser("scorenet", in_channels=1, width=32)
    trained = sigma_ladder(1.0, 0.01, num_levels=10)
    train_denoiser(score, get_dataset("mnist", split="train"), loss="dsm", ladder=trained, epochs=20)
    ladder = sigma_ladder(0.5, 0.01, num_levels=10)
    den = MultiStepDenoiser(score, get_noise("laplace", sigma=0.5), ladder=ladder, steps_per_level=1,
                            step_size=default_step_size(ladder), training_ladder=trained)  # 0.01**2
    smoothed = SmoothedClassifier(Denoised(f, den), noise=get_noise("laplace", sigma=0.5), num_classes=10)
"""

from .checkpoint import (
    DenoiserMeta,
    load_denoiser,
    read_denoiser_checkpoint,
    save_denoiser,
)
from .for_noise import (
    DENOISE_MODES,
    MULTISTEP_DEFAULTS,
    default_step_size,
    denoiser_for_noise,
    multistep_ladder,
    trained_noise,
)
from .losses import (
    ClassificationLoss,
    DenoiserLoss,
    DSMLoss,
    MSELoss,
    StabilityLoss,
    get_denoiser_loss,
    list_denoiser_losses,
    register_denoiser_loss,
    zeroth_order_cross_entropy,
)
from .nets import (
    DENOISERS,
    DnCNN,
    ScoreNet,
    build_denoiser,
    denoiser_kind,
    list_denoisers,
    record_training,
    register_denoiser,
)
from .score import (
    MultiStepDenoiser,
    OneStepDenoiser,
    check_ladder,
    dsm_loss,
    level_step_sizes,
    multistep_denoise,
    noise_potential,
    sigma_ladder,
    tweedie_denoise,
)
from .train import classifier_fingerprint, denoising_psnr, psnr, train_denoiser
from .wrapper import Denoised

__all__ = [
    "DENOISERS",
    "DENOISE_MODES",
    "MULTISTEP_DEFAULTS",
    "ClassificationLoss",
    "DSMLoss",
    "Denoised",
    "DenoiserLoss",
    "DenoiserMeta",
    "DnCNN",
    "MSELoss",
    "MultiStepDenoiser",
    "OneStepDenoiser",
    "ScoreNet",
    "StabilityLoss",
    "build_denoiser",
    "check_ladder",
    "classifier_fingerprint",
    "default_step_size",
    "denoiser_for_noise",
    "denoiser_kind",
    "denoising_psnr",
    "dsm_loss",
    "get_denoiser_loss",
    "level_step_sizes",
    "list_denoiser_losses",
    "list_denoisers",
    "load_denoiser",
    "multistep_denoise",
    "multistep_ladder",
    "noise_potential",
    "psnr",
    "read_denoiser_checkpoint",
    "record_training",
    "register_denoiser",
    "register_denoiser_loss",
    "save_denoiser",
    "sigma_ladder",
    "train_denoiser",
    "trained_noise",
    "tweedie_denoise",
    "zeroth_order_cross_entropy",
]
