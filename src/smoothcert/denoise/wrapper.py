"""``Denoised(classifier, denoiser)``: a denoiser prepended to a fixed classifier.

Denoised smoothing (Salman et al. 2020, "Denoised smoothing: a provable defense for pretrained
classifiers") smooths ``f(D(x))`` instead of ``f(x)``. The composition is a deterministic base
classifier like any other, so every certificate of :class:`~smoothcert.smooth.SmoothedClassifier`
holds for it unchanged; only the classifier's accuracy under noise improves.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..noise import Noise, NoiseAware, describe_noise_mismatch
from .score import DENOISER_MISMATCH_ADVICE

__all__ = ["Denoised"]


def _describe(module: nn.Module) -> str:
    own = type(module).__repr__ is not nn.Module.__repr__  # a settings-style repr, not the module tree
    return repr(module) if own else type(module).__name__


class Denoised(nn.Module, NoiseAware):
    """``x -> classifier(clamp(denoiser(x), 0, 1))``, usable wherever a base classifier is.

    Args:
        classifier: ``f``, mapping inputs in [0, 1] (normalization inside) to logits ``[B, K]``.
            Left as it is: constructing the wrapper changes neither its mode nor its parameters'
            ``requires_grad`` (``freeze=True`` asks for that). Calling :meth:`train` or
            :meth:`eval` on the wrapper puts the classifier in eval mode (its batch-norm
            statistics and dropout are part of the classifier being smoothed), as smoothing does
            through ``eval()``. Gradients flow through it to its input (classifier-guided losses
            with full access, attacks on the composition); attacks take gradients with respect to
            the input only, so its parameters' gradients stay untouched either way.
        denoiser: ``D``, mapping ``[B, C, H, W]`` to ``[B, C, H, W]`` (e.g. :class:`DnCNN`,
            :class:`OneStepDenoiser`, :class:`MultiStepDenoiser`). Must share no parameter with
            the classifier.
        clamp: clip ``D(x)`` to [0, 1] before ``f``: the classifier was trained on images in
            [0, 1], and any fixed post-processing keeps the composition a valid base classifier.
            Clipping has zero gradient outside [0, 1], so the training losses of
            :mod:`smoothcert.denoise.losses` feed ``D(x)`` unclipped, as Salman et al. do.
        trained_for: the noise ``D`` was trained for, for the mismatch warning of smoothing
            (:func:`~smoothcert.denoise.trained_noise` of a loaded checkpoint's metadata). None:
            ask ``D`` itself if it is :class:`~smoothcert.noise.NoiseAware` (the score denoisers
            are), else unknown.
        freeze: opt in to freezing the classifier *in place* now: eval mode and
            ``requires_grad=False`` on its parameters (so that ``wrapper.parameters()`` can go to
            an optimiser without training it). Off by default: the caller's module is not touched.

    The wrapper starts in train mode if its denoiser or its classifier is in train mode (so that
    :class:`~smoothcert.smooth.SmoothedClassifier` switches both to eval, with its warning), else
    in eval mode.

    ``forward(x)``: ``x`` ``[B, C, H, W]`` -> logits ``[B, K]``; :meth:`denoise` gives the image
    the classifier sees. :meth:`settings` records the denoiser's settings when it has them;
    :meth:`noise_mismatch` (:class:`~smoothcert.noise.NoiseAware`) compares the noise the denoiser
    is made for with a smoothing noise (:class:`~smoothcert.smooth.SmoothedClassifier` warns on a
    mismatch).
    """

    def __init__(
        self,
        classifier: nn.Module,
        denoiser: nn.Module,
        *,
        clamp: bool = True,
        trained_for: Noise | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module) or not isinstance(denoiser, nn.Module):
            raise InputTypeError(
                f"classifier and denoiser must be torch.nn.Modules, got {type(classifier).__name__} "
                f"and {type(denoiser).__name__}"
            )
        if trained_for is not None and not isinstance(trained_for, Noise):
            raise InputTypeError(f"trained_for must be a smoothcert Noise or None, got {trained_for!r}")
        shared = {id(p) for p in classifier.parameters()} & {id(p) for p in denoiser.parameters()}
        if shared:
            raise InputError(
                f"the denoiser shares {len(shared)} parameter tensor(s) with the classifier; "
                "the classifier must stay untouched while the denoiser trains"
            )
        if freeze:
            classifier.eval()
            for p in classifier.parameters():
                p.requires_grad_(False)
        self.denoiser = denoiser
        self.classifier = classifier
        self.clamp = bool(clamp)
        self.trained_for = trained_for
        # The wrapper's own flag only (nn.Module.train would recurse into the caller's classifier).
        self.training = denoiser.training or classifier.training

    def train(self, mode: bool = True) -> Denoised:
        """Set the denoiser's mode; the classifier goes to eval mode (its batch-norm statistics
        and dropout are part of the classifier being smoothed)."""
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
        """'' if the denoiser is made for ``noise`` or nothing is known about it, else why not.

        What it is made for: ``trained_for`` if given, else the denoiser's own answer when it is
        :class:`~smoothcert.noise.NoiseAware` (:class:`OneStepDenoiser`, :class:`MultiStepDenoiser`).
        A mismatch leaves every certificate valid (``f(D(.))`` is a fixed base classifier whatever
        ``D`` is), but ``D`` then removes noise of the wrong family or size, which costs accuracy.
        """
        if not isinstance(noise, Noise):
            return ""
        if self.trained_for is not None:
            return describe_noise_mismatch(self.trained_for, noise, what=f"the denoiser ({type(self.denoiser).__name__})",
                                           advice=DENOISER_MISMATCH_ADVICE)
        if isinstance(self.denoiser, NoiseAware):
            return self.denoiser.noise_mismatch(noise)
        return ""

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
