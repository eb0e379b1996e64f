"""Typed, frozen settings of a run: what the command line builds from its arguments, and what a
Python caller builds directly (``run_certify(CertifyRun(model=ClassifierSpec(checkpoint="m.pt"),
out="r.tsv", n=1000))``).

Each object checks its own values when it is made and raises :class:`~smoothcert.errors.InputError`
(or :class:`~smoothcert.errors.InputTypeError`) with a message naming the setting, before any file
is read or written. Settings that need a file or the data to be decided (the checkpoint's noise,
the dataset's default architecture) stay ``None`` here and are decided by the run functions.

Building blocks: :class:`DataSpec` (where the data comes from), :class:`Selection` (which inputs),
:class:`DenoiserSpec` (denoised smoothing), :class:`ClassifierSpec` (checkpoint, noise, device),
:class:`EngineSpec` (how f(x + noise) is sampled). Runs: :class:`CertifyRun`, :class:`PredictRun`,
:class:`AttackRun`, :class:`TrainRun`, :class:`DenoiserTrainRun`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import AUTO, check_batch_size, check_choice, check_float, check_int, check_sample_sizes
from ..data import list_datasets
from ..denoise import DENOISE_MODES, denoiser_kind, list_denoiser_losses
from ..distributed import DEFAULT_TIMEOUT
from ..engine import COMPILE_MODES, NOISE_DTYPES, PRECISIONS, default_batch_size
from ..errors import InputError, InputTypeError
from ..models import SOURCE_FORMATS, list_models, parse_external_arch
from ..noise import list_noises
from ..soft import SELECTIONS
from ..stats import MEAN_BOUNDS, check_alpha
from ..train import TrainConfig, TrainingMethod, get_method
from .attack import ATTACKS
from .certify import check_pack, select_indices

__all__ = [
    "CERTIFICATES",
    "DEFAULT_RADII",
    "AttackRun",
    "CertifyRun",
    "ClassifierSpec",
    "DataSpec",
    "DenoiserSpec",
    "DenoiserTrainRun",
    "EngineSpec",
    "ImportRun",
    "PredictRun",
    "Selection",
    "TrainRun",
    "training_method",
]

#: Radii of the certified-accuracy tables (Cohen et al. 2019 report 0, 0.25, ..., in l2).
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)

PathLike = str | os.PathLike[str]


def _set(obj: object, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, name, value)


# ----------------------------------------------------------------------------- building blocks


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where a run's data comes from (:func:`smoothcert.data.get_dataset`).

    ``dataset``: a registered name; None in certify/predict/attack runs means the checkpoint's.
    ``subset``: for ``samples`` (cifar10, mnist, ...). ``root``: the data directory; None means
    ``$SMOOTHCERT_DATA`` or ``./data`` (never a path relative to the installed package).
    ``download``: fetch missing public datasets.
    """

    dataset: str | None = None
    subset: str | None = None
    root: PathLike | None = None
    download: bool = False

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, list_datasets(), optional=True)
        if self.root is not None:
            _set(self, "root", Path(self.root))

    def options(self) -> dict[str, Any]:
        """The keywords of :func:`~smoothcert.data.get_dataset` besides name and split."""
        return {"root": self.root, "download": self.download, **({"subset": self.subset} if self.subset else {})}


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which inputs of the split a run visits: ``start``, ``start + skip``, ..., at most
    ``max_count`` of them (None or -1: all) — Cohen et al.'s ``--skip``/``--max``. Any other
    negative ``max_count``, ``max_count = 0`` and a ``start`` past the end of the split are errors
    (they used to run everything or write a header-only file)."""

    skip: int = 1
    max_count: int | None = None
    start: int = 0

    def __post_init__(self) -> None:
        check_int("skip", self.skip, minimum=1)
        if self.start < 0:
            raise InputError(f"start must be >= 0, got {self.start}")
        if self.max_count == -1:
            _set(self, "max_count", None)
        elif self.max_count is not None and self.max_count < 1:
            raise InputError(f"max must be a positive number of inputs, or -1 for all; got {self.max_count}")

    def indices(self, length: int) -> list[int]:
        """The selected indices of a split of ``length`` inputs (never empty: a ``start`` at or
        past ``length`` is an InputError naming the split's size)."""
        if self.start >= length:
            raise InputError(f"start {self.start} is past the end of the data, which has {length} inputs "
                             f"(indices 0..{length - 1})")
        return select_indices(length, skip=self.skip, max_count=self.max_count, start=self.start)


@dataclass(frozen=True, kw_only=True)
class DenoiserSpec:
    """Denoised smoothing: smooth ``classifier(denoiser(x))``, the classifier untouched.

    ``source``: a denoiser checkpoint of ``train-denoiser`` (a DnCNN, or a score network used as
    ``mode`` says), or ``"ffdnet"`` (the pretrained colour FFDNet at the smoothing sigma, extra
    ``pretrained``; only when no file of that name exists). The score-network settings (``mode``,
    ``steps``, ``step_size``, ``levels``) are those of
    :func:`smoothcert.denoise.denoiser_for_noise`; None takes its defaults.
    """

    source: str
    mode: str | None = None
    steps: int | None = None
    step_size: float | None = None
    levels: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, (str, os.PathLike)) or not str(self.source):
            raise InputTypeError(f"denoiser source must be a file path or 'ffdnet', got {self.source!r}")
        _set(self, "source", str(self.source))
        check_choice("denoise mode", self.mode, DENOISE_MODES, optional=True)
        if self.levels is not None:
            _set(self, "levels", tuple(float(v) for v in self.levels))

    @property
    def score_settings(self) -> bool:
        """Whether any score-network setting was given."""
        return self.mode is not None or any(v is not None for v in (self.steps, self.step_size, self.levels))


@dataclass(frozen=True, kw_only=True)
class ClassifierSpec:
    """The classifier a run smooths or attacks: a smoothcert checkpoint, or a torchvision/timm
    network by name with a weights file (exactly one of ``checkpoint`` and ``arch``).

    ``checkpoint``: a checkpoint file, or the name of a pretrained classifier
    (:data:`smoothcert.pretrained.PRETRAINED_CLASSIFIERS`). ``arch``: ``"torchvision:NAME"`` or
    ``"timm:NAME"`` (:mod:`smoothcert.models.external`), with ``weights`` (its state dict file)
    and optionally ``mean``/``std``, the normalization the weights expect (default: torchvision's
    ImageNet constants, or timm's ``pretrained_cfg``); the run's dataset decides the classes and
    the input size. ``noise``/``sigma``: the smoothing noise; None takes the checkpoint's (a
    weights file names none: give both). ``denoiser``: denoised smoothing, or None.
    ``device``: a torch device name; None means cuda if available, else cpu.
    """

    checkpoint: str | None = None
    arch: str | None = None
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    noise: str | None = None
    sigma: float | None = None
    denoiser: DenoiserSpec | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.arch is None):
            raise InputError("give either a checkpoint (--checkpoint FILE) or an architecture with its weights "
                             "(--arch torchvision:NAME --weights FILE), not " + ("both" if self.arch else "neither"))
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)) or not str(self.checkpoint):
                raise InputTypeError(f"checkpoint must be a file path or a pretrained classifier's name, "
                                     f"got {self.checkpoint!r}")
            _set(self, "checkpoint", str(self.checkpoint))
            given = [n for n in ("weights", "mean", "std") if getattr(self, n) is not None]
            if given:
                raise InputError(f"{', '.join(given)} belong to --arch (a checkpoint holds its weights and "
                                 "normalization)")
        else:
            _set(self, "arch", str(parse_external_arch(self.arch)))
            if self.weights is None or not str(self.weights):
                raise InputError(f"--arch {self.arch} needs its weights: --weights FILE (a state dict)")
            _set(self, "weights", str(self.weights))
            if (self.mean is None) != (self.std is None):
                raise InputError("give both --normalize-mean and --normalize-std, or neither")
            for name in ("mean", "std"):
                values = getattr(self, name)
                if values is not None:
                    values = tuple(float(v) for v in values)
                    if not values or not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
                        raise InputError(f"normalize {name} must be finite numbers" + (" > 0" if name == "std" else "")
                                         + f", got {list(values)}")
                    _set(self, name, values)
            if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
                raise InputError(f"--normalize-mean has {len(self.mean)} values, --normalize-std {len(self.std)}")
        check_choice("noise", self.noise, list_noises(), optional=True)
        if self.sigma is not None:
            check_float("sigma", self.sigma, strict=True)
        if self.denoiser is not None and not isinstance(self.denoiser, DenoiserSpec):
            raise InputTypeError(f"denoiser must be a DenoiserSpec or None, got {type(self.denoiser).__name__}")


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """How f(x + noise) is sampled: the keywords of :class:`~smoothcert.smooth.SmoothedClassifier`
    (precision, layout, compilation, memory budget, unbounded inputs) and ``batch_size``, the
    noisy rows per forward pass (an int, or "auto": from free memory / ``max_batch_bytes``; None:
    the run's device decides, :func:`~smoothcert.engine.default_batch_size`: "auto" on CPU, 1000
    elsewhere -- :meth:`for_device`).
    ``compile`` None ("auto") is decided by the certify and predict runs
    (:func:`smoothcert.runs.launch.resolve_compile`: a resumed file's record, else compiled on CPU
    for runs large enough to amortise it); elsewhere it means off."""

    batch_size: int | str | None = None
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool | None = None
    compile_mode: str | None = None
    fixed_shape: bool | None = None
    max_batch_bytes: int | None = None
    allow_unbounded: bool = False
    #: "float64" (exact, default) or "float32" (fast; Gaussian tail truncated at 5.768 sigma).
    noise_dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        if self.compile is not None and not isinstance(self.compile, bool):
            raise InputTypeError(f"compile must be True, False or None (auto), got {self.compile!r}")
        check_choice("noise_dtype", self.noise_dtype, NOISE_DTYPES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES, optional=True)
        if self.max_batch_bytes is not None:
            check_int("max_batch_bytes", self.max_batch_bytes, minimum=1)

    @property
    def rows(self) -> int | str:
        """``batch_size`` as given, or "auto" where the device will decide (for checks made before)."""
        return AUTO if self.batch_size is None else self.batch_size

    def for_device(self, device: Any) -> EngineSpec:
        """This spec with ``batch_size`` None replaced by ``device``'s default rows per pass."""
        if self.batch_size is not None:
            return self
        return dataclasses.replace(self, batch_size=default_batch_size(device))

    def classifier_options(self) -> dict[str, Any]:
        """The keywords of :class:`~smoothcert.smooth.SmoothedClassifier` (all but ``batch_size``)."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": bool(self.compile),
                "compile_mode": self.compile_mode, "fixed_shape": self.fixed_shape,
                "max_batch_bytes": self.max_batch_bytes, "allow_unbounded": self.allow_unbounded,
                "noise_dtype": self.noise_dtype}


def _check_dist_timeout(minutes: float) -> None:
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
        raise InputError(f"dist_timeout must be a positive number of minutes, got {minutes}")


_DEFAULT_DIST_MINUTES = DEFAULT_TIMEOUT.total_seconds() / 60


# ---------------------------------------------------------------------------- certify / predict

#: What :class:`CertifyRun` certifies with (``certificate``): CERTIFY of the input-smoothed classifier
#: (``smoothing``; ``hard`` is the same, named as the HeatSmoothing paper does), for a model with a declared
#: 1-Lipschitz backbone (:mod:`smoothcert.lipschitz`) smoothing on the features or the margin of a linear
#: head, the soft-classifier certificates (:mod:`smoothcert.soft`), or the one-pass HeatSmoothing
#: heuristic (rows without a certified radius; see :mod:`smoothcert.runs.soft`).
CERTIFICATES = ("smoothing", "hard", "feature-smoothing", "lipschitz-margin", "soft-phi", "soft-lbound", "deterministic")
#: The certificates run by :mod:`smoothcert.runs.soft` (one input at a time, their own row schemas).
@dataclass(frozen=True, kw_only=True)
class CertifyRun:
    """CERTIFY every selected input of ``data``'s ``split`` (see
    :func:`smoothcert.runs.certify.certify_dataset` for ``target``, ``radii``, ``stages``,
    ``radius_loss``, ``pack``) and write one row each to ``out`` (resumable). Under torchrun the run
    is sharded over the processes, which wait ``dist_timeout`` minutes for each other.

    ``certificate``: "hard" (CERTIFY), "soft-phi" / "soft-lbound" (certificates of the smoothed soft
    classifier, Gaussian noise only, ``bound_method`` the confidence bound) or "deterministic" (the
    one-pass HeatSmoothing heuristic: not a certificate, its rows hold ``heuristic_radius`` and no
    ``radius``). ``selection="clean"`` takes the class from one clean forward pass instead of n0 draws
    (the HeatSmoothing paper's variant; sound). Anything but hard CERTIFY with n0 draws runs in one
    process, one input at a time (:mod:`smoothcert.runs.soft`)."""

    model: ClassifierSpec
    out: PathLike
    data: DataSpec = field(default_factory=DataSpec)
    split: str = "test"
    select: Selection = field(default_factory=Selection)
    engine: EngineSpec = field(default_factory=EngineSpec)
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    norm: str | None = None
    two_class: bool = False
    target: str = "fixed"
    radii: tuple[float, ...] = ()
    stages: tuple[int, ...] | str | None = None
    radius_loss: float = 0.02
    pack: int = 1
    dist_timeout: float = _DEFAULT_DIST_MINUTES
    #: another run writing ``out``: wait for it to finish (True) or refuse at once (False).
    wait: bool = False
    #: see :data:`CERTIFICATES`; "feature-smoothing" writes CERTIFY rows, "lipschitz-margin" MARGIN rows
    #: (deterministic; n, n0, alpha, noise unused), the soft certificates SOFT_CERTIFY rows.
    certificate: str = "smoothing"
    selection: str = "draws"
    bound_method: str = "best"

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        check_alpha(self.alpha)
        check_sample_sizes(n=self.n, n0=self.n0, batch_size=self.engine.rows)
        check_pack(self.pack)
        check_choice("certificate", self.certificate, CERTIFICATES)
        if self.certificate == "hard":
            _set(self, "certificate", "smoothing")
        lipschitz = self.certificate in ("feature-smoothing", "lipschitz-margin")
        if lipschitz and (self.target != "fixed" or self.model.denoiser is not None):
            raise InputError(f"certificate={self.certificate!r} supports target='fixed' and no denoiser")
        if self.certificate == "feature-smoothing" and self.norm not in (None, "l2"):
            raise InputError("feature-space certificates transfer in l2 only (norm='l2')")
        if lipschitz and self.selection != "draws":
            raise InputError(f"certificate={self.certificate!r} takes no class selection: leave selection at 'draws'")
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("bound_method", self.bound_method, MEAN_BOUNDS)
        if (self.certificate != "smoothing" or self.selection != "draws") and (
            self.target != "fixed" or self.two_class or self.pack != 1
        ):
            raise InputError(f"certificate={self.certificate!r} with selection={self.selection!r} runs one input "
                             "at a time with n draws: leave target fixed, two_class off and pack 1")
        if self.certificate == "deterministic" and self.selection != "draws":
            raise InputError("the deterministic heuristic takes no class selection: leave selection at 'draws'")
        check_choice("target", self.target, ("fixed", "radius", "grid"))
        if self.target != "fixed" and self.two_class:
            raise InputError(f"target={self.target!r} works with the one-class certificate; "
                             "two_class is not supported with it")
        _set(self, "radii", tuple(float(r) for r in self.radii))
        if self.target == "grid" and not self.radii:
            raise InputError("target='grid' needs the radii to decide (--radii)")
        _set(self, "stages", _stages(self.stages))
        _check_dist_timeout(self.dist_timeout)


def _stages(stages: Sequence[int | str] | str | None) -> tuple[int, ...] | str | None:
    """Grid stages: None, sample sizes, or "auto" (alone: the stages are then chosen from the
    radii and n)."""
    if stages is None or stages == AUTO:
        return stages
    if isinstance(stages, str):
        raise InputError(f"stages must be sample sizes or 'auto', got {stages!r}")
    values = list(stages)
    if AUTO in values:
        if len(values) > 1:
            raise InputError("--stages auto stands alone (the stages are then chosen from --radii and --n)")
        return AUTO
    return tuple(check_int("stages", s, minimum=1) for s in values)


@dataclass(frozen=True, kw_only=True)
class PredictRun:
    """PREDICT every selected input (see :func:`smoothcert.runs.certify.predict_dataset`) and write
    one row each to ``out`` (resumable, shardable like :class:`CertifyRun`)."""

    model: ClassifierSpec
    out: PathLike
    data: DataSpec = field(default_factory=DataSpec)
    split: str = "test"
    select: Selection = field(default_factory=Selection)
    engine: EngineSpec = field(default_factory=EngineSpec)
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    pack: int = 1
    dist_timeout: float = _DEFAULT_DIST_MINUTES
    #: another run writing ``out``: wait for it to finish (True) or refuse at once (False).
    wait: bool = False

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        check_alpha(self.alpha)
        check_sample_sizes(n=self.n, batch_size=self.engine.rows)
        check_pack(self.pack)
        _check_dist_timeout(self.dist_timeout)


# ------------------------------------------------------------------------------------ attack


@dataclass(frozen=True, kw_only=True)
class AttackRun:
    """l2 PGD / DDN on every selected input (see :func:`smoothcert.runs.attack.attack_dataset`),
    one row each in ``out`` (resumable).

    ``smoothed``: attack the smoothed classifier (True) or the base network (False); None decides
    from the checkpoint: smoothed if it was trained with noise or ``model.noise`` is given. ``n0``,
    ``n``, ``alpha``, ``m`` and ``engine.batch_size`` concern the smoothed classifier only; attacks
    run in fp32, CERTIFY/PREDICT at ``engine.precision`` (compilation is not used).
    """

    model: ClassifierSpec
    out: PathLike
    data: DataSpec = field(default_factory=DataSpec)
    split: str = "test"
    select: Selection = field(default_factory=Selection)
    engine: EngineSpec = field(default_factory=EngineSpec)
    smoothed: bool | None = None
    attack: str = "both"
    eps: tuple[float, ...] = (0.25, 0.5, 1.0)
    steps: int = 100
    m: int = 8
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    attack_batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        check_choice("attack", self.attack, ATTACKS)
        _set(self, "eps", tuple(float(e) for e in self.eps))
        if any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise InputError(f"eps must be finite and >= 0, got {list(self.eps)}")
        if self.attack != "ddn" and not self.eps:
            raise InputError("PGD needs at least one eps")
        check_int("steps", self.steps, minimum=1)
        check_int("attack_batch", self.attack_batch, minimum=1)
        check_int("m (noise draws per attack step)", self.m, minimum=1)
        check_alpha(self.alpha)
        check_sample_sizes(n=self.n, n0=self.n0, batch_size=self.engine.rows)
        if self.engine.compile or self.engine.compile_mode is not None:
            raise InputError("attack runs do not compile the model: leave engine.compile off")


# ------------------------------------------------------------------------------------ training


def training_method(name: str, hparams: Mapping[str, Any]) -> TrainingMethod:
    """The training method ``name`` with the hyperparameters ``hparams`` (keys with ``-`` or ``_``);
    the method itself refuses unknown keys, listing its own with their defaults
    (:meth:`TrainingMethod.from_hparams`), and old spellings it still understands."""
    checked = {str(key).strip().replace("-", "_"): value for key, value in hparams.items()}
    try:
        return get_method(name, **checked)
    except ValueError as err:  # the method's own checks (InputError is a ValueError)
        raise InputError(f"--hparam for method {name!r}: {err}") from None


@dataclass(frozen=True, kw_only=True)
class TrainRun:
    """Train a base classifier with noise (:func:`smoothcert.train.train`), one checkpoint per epoch.

    ``arch``/``augment``: None takes the ``init`` checkpoint's architecture, else the dataset's
    default (:data:`smoothcert.runs.training.TRAIN_DEFAULTS`). ``init``: a checkpoint whose weights
    start the run (fine-tuning: same architecture, classes and channels). ``method``/``hparams``:
    the loss (:func:`smoothcert.train.get_method`). ``config``: the optimisation (Cohen et al.'s
    CIFAR-10 schedule by default). ``evaluate``: noisy test accuracy each epoch. ``limit``: train on
    the first N examples. ``resume``: continue ``out``; without it an existing ``out`` is refused.
    ``init_backbone``: a checkpoint whose Lipschitz backbone (and normalization) starts the run's
    backbone, the head left freshly initialised (FaRS: ``sll-small`` -> ``sll-small-mlp``;
    :func:`smoothcert.models.transfer_backbone`); not together with ``init``.
    """

    out: PathLike
    sigma: float
    data: DataSpec = field(default_factory=lambda: DataSpec(dataset="embedded"))
    noise: str = "gaussian"
    arch: str | None = None
    augment: bool | None = None
    method: str = "gaussian"
    hparams: Mapping[str, Any] = field(default_factory=dict)
    init: PathLike | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    evaluate: bool = False
    limit: int | None = None
    resume: bool = False
    device: str | None = None
    init_backbone: PathLike | None = None

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        if self.data.dataset is None:
            raise InputError("a training run needs data.dataset")
        check_choice("noise", self.noise, list_noises())
        check_float("sigma", self.sigma, strict=True)
        check_choice("arch", self.arch, list_models(), optional=True)
        _set(self, "hparams", dict(self.hparams))
        method = training_method(self.method, self.hparams)  # a bad hyperparameter fails before any data is read
        if self.init is not None and self.init_backbone is not None:
            raise InputError("give init (--init: the whole network) or init_backbone (--init-backbone: the "
                             "Lipschitz backbone only), not both")
        if method.needs_init and self.init is None:
            raise InputError(f"method {self.method!r} fine-tunes a trained model: give its checkpoint as init (--init)")
        if not isinstance(self.config, TrainConfig):
            raise InputTypeError(f"config must be a TrainConfig, got {type(self.config).__name__}")
        if self.limit is not None:
            check_int("limit", self.limit, minimum=1)


@dataclass(frozen=True, kw_only=True)
class DenoiserTrainRun:
    """Train a denoiser for denoised smoothing (:func:`smoothcert.denoise.train_denoiser`).

    ``kind``: a registered denoiser network; a ``denoiser`` kind (dncnn) is trained for one
    ``noise`` and ``sigma`` with ``loss`` mse, stability or classification (the guided ones with the
    frozen ``classifier``, by ``access`` "full" or "query" with ``queries`` and ``mu``); a ``score``
    kind (scorenet) with ``loss`` dsm over a ladder: ``sigmas`` (decreasing), or ``ladder`` =
    (max, min, levels) geometric, default (1.0, 0.01, 10). ``arch_kwargs``: the network's settings.
    """

    out: PathLike
    data: DataSpec = field(default_factory=lambda: DataSpec(dataset="embedded"))
    kind: str = "dncnn"
    loss: str = "mse"
    access: str = "full"
    queries: int = 32
    mu: float = 1e-3
    classifier: str | None = None
    noise: str = "gaussian"
    sigma: float | None = None
    sigmas: tuple[float, ...] | None = None
    ladder: tuple[float, float, float] | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    evaluate: bool = False
    limit: int | None = None
    resume: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        _set(self, "out", Path(self.out))
        if self.data.dataset is None:
            raise InputError("a training run needs data.dataset")
        check_choice("loss", self.loss, list_denoiser_losses())
        kind = denoiser_kind(self.kind)
        if (kind == "score") != (self.loss == "dsm"):
            raise InputError(f"--kind {self.kind} is a {kind} network: train it with "
                             f"{'--loss dsm' if kind == 'score' else '--loss mse, stability or classification'}")
        if kind == "score":
            if self.sigma is not None:
                raise InputError("a score network trains over a ladder: pass --sigmas or --ladder, not --sigma")
            if self.sigmas and self.ladder:
                raise InputError("pass --sigmas or --ladder, not both")
            if self.ladder is not None:
                if len(self.ladder) != 3:
                    raise InputError(f"ladder is (MAX, MIN, L), got {self.ladder}")
                if not float(self.ladder[2]).is_integer():
                    raise InputError(f"--ladder MAX MIN L: L must be a whole number of levels, got {self.ladder[2]:g}")
        else:
            if self.sigma is None:
                raise InputError(f"--kind {self.kind} is trained for one noise: pass --sigma (and --noise)")
            if self.sigmas or self.ladder:
                raise InputError("--sigmas/--ladder are for score networks (--kind scorenet --loss dsm)")
            check_choice("noise", self.noise, list_noises())
            check_float("sigma", self.sigma, strict=True)
        check_choice("access", self.access, ("full", "query"))
        if self.sigmas is not None:
            _set(self, "sigmas", tuple(float(s) for s in self.sigmas))
        _set(self, "arch_kwargs", {str(k).strip().replace("-", "_"): v for k, v in self.arch_kwargs.items()})
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        if self.limit is not None:
            check_int("limit", self.limit, minimum=1)

    @property
    def network_kind(self) -> str:
        """``"denoiser"`` or ``"score"``."""
        return denoiser_kind(self.kind)


# ---------------------------------------------------------------------------- import a checkpoint


@dataclass(frozen=True, kw_only=True)
class ImportRun:
    """Turn another code base's checkpoint ``source`` (format ``source_format``, one of
    :data:`smoothcert.models.SOURCE_FORMATS`) into a smoothcert checkpoint ``out`` for ``dataset``.
    ``sigma``: the training noise level (None: read from a ``noise_<sigma>`` directory on the
    path, else refused); ``arch``: their architecture name, default the file's."""

    source: PathLike
    out: PathLike
    source_format: str = "cohen2019"
    dataset: str = "cifar10"
    sigma: float | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        _set(self, "source", Path(self.source))
        _set(self, "out", Path(self.out))
        check_choice("source_format", self.source_format, SOURCE_FORMATS)
        if self.sigma is not None:
            check_float("sigma", self.sigma)
