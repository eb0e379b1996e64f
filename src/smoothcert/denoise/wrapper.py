"""``Denoised(classifier, denoiser)``: a denoiser prepended to a frozen classifier.

Denoised smoothing (Salman et al. 2020, "Denoised smoothing: a provable defense for pretrained
classifiers") smooths ``f(D(x))`` instead of ``f(x)``. The composition is a deterministic base
classifier like any other, so every certificate of :class:`~smoothcert.smooth.SmoothedClassifier`
holds for it unchanged; only the classifier's accuracy under noise improves.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..noise import Noise

__all__ = ["Denoised"]


def _describe(module: nn.Module) -> str:
    own = type(module).__repr__ is not nn.Module.__repr__  # a settings-style repr, not the module tree
    return repr(module) if own else type(module).__name__


class Denoised(nn.Module):
    """``x -> classifier(clamp(denoiser(x), 0, 1))``, usable wherever a base classifier is.

    Args:
        classifier: ``f``, mapping inputs in [0, 1] (normalization inside) to logits ``[B, K]``.
            It is frozen *in place*: its parameters get ``requires_grad=False`` and it is put in
            eval mode, where it stays even when :meth:`train` is called on the wrapper (the wrapper
            itself starts in the denoiser's mode). Gradients
            still flow through it to its input (classifier-guided losses with full access,
            attacks on the composition).
        denoiser: ``D``, mapping ``[B, C, H, W]`` to ``[B, C, H, W]`` (e.g. :class:`DnCNN`,
            :class:`OneStepDenoiser`, :class:`MultiStepDenoiser`). Must share no parameter with
            the classifier.
        clamp: clip ``D(x)`` to [0, 1] before ``f``: the classifier was trained on images in
            [0, 1], and any fixed post-processing keeps the composition a valid base classifier.
            Clipping has zero gradient outside [0, 1], so the training losses of
            :mod:`smoothcert.denoise.losses` feed ``D(x)`` unclipped, as Salman et al. do.

    ``forward(x)``: ``x`` ``[B, C, H, W]`` -> logits ``[B, K]``; :meth:`denoise` gives the image
    the classifier sees. :meth:`settings` records the denoiser's settings when it has them;
    :meth:`noise_mismatch` compares the noise the denoiser is made for with a smoothing noise
    (:class:`~smoothcert.smooth.SmoothedClassifier` warns on a mismatch).
    """

    def __init__(self, classifier: nn.Module, denoiser: nn.Module, *, clamp: bool = True) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module) or not isinstance(denoiser, nn.Module):
            raise InputTypeError(
                f"classifier and denoiser must be torch.nn.Modules, got {type(classifier).__name__} "
                f"and {type(denoiser).__name__}"
            )
        shared = {id(p) for p in classifier.parameters()} & {id(p) for p in denoiser.parameters()}
        if shared:
            raise InputError(
                f"the denoiser shares {len(shared)} parameter tensor(s) with the classifier; "
                "the classifier must stay untouched while the denoiser trains"
            )
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.denoiser = denoiser
        self.classifier = classifier
        self.clamp = bool(clamp)
        self.train(denoiser.training)  # a loaded (eval) denoiser gives an eval wrapper; the classifier: eval

    def train(self, mode: bool = True) -> Denoised:
        """Set the denoiser's mode; the classifier stays in eval mode (its batch-norm statistics
        and dropout are part of the frozen classifier)."""
        super().train(mode)
        self.classifier.eval()
        return self

    def denoise(self, x: Tensor) -> Tensor:
        """The image the classifier sees: ``D(x)``, clipped to [0, 1] if ``clamp``."""
        z = self.denoiser(x)
        return z.clamp(0.0, 1.0) if self.clamp else z

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.denoise(x))

    def noise_mismatch(self, noise: Noise) -> str:
        """'' if the denoiser is made for ``noise`` or records nothing, else why not.

        The record is the denoiser's ``noise`` attribute: the noise a :class:`OneStepDenoiser` or
        :class:`MultiStepDenoiser` denoises, or the training noise noted on a DnCNN by
        ``train_denoiser`` / ``load_denoiser``. A mismatch leaves every certificate valid (``f(D(.))``
        is a fixed base classifier whatever ``D`` is), but ``D`` then removes noise of the wrong
        family or size, which costs accuracy.
        """
        own = getattr(self.denoiser, "noise", None)
        if not isinstance(own, Noise) or not isinstance(noise, Noise):
            return ""
        if own.name == noise.name and math.isclose(own.sigma, noise.sigma, rel_tol=1e-9, abs_tol=0.0):
            return ""
        return (
            f"the denoiser ({type(self.denoiser).__name__}) is made for {own.name} noise sigma {own.sigma:g}, but "
            f"smoothing uses {noise.name} noise sigma {noise.sigma:g}; the certificates stay valid, but the "
            "denoiser removes the wrong noise and accuracy will likely suffer. Use a denoiser for the "
            "smoothing noise"
        )

    def settings(self) -> dict[str, Any]:
        """Plain-dict description for run records: the denoiser's own ``settings()`` if it has one."""
        get = getattr(self.denoiser, "settings", None)
        den = get() if callable(get) else {"denoiser": type(self.denoiser).__name__}
        return {**den, "classifier": type(self.classifier).__name__, "clamp": self.clamp}

    def __repr__(self) -> str:
        return (
            f"Denoised(classifier={type(self.classifier).__name__}, denoiser={_describe(self.denoiser)}, "
            f"clamp={self.clamp})"
        )
