"""Runs over a dataset: typed, frozen settings (:mod:`~smoothcert.runs.settings`) and the functions
that execute them, each writing a resumable result file or a checkpoint.

- settings: :class:`DataSpec`, :class:`Selection`, :class:`DenoiserSpec`, :class:`ClassifierSpec`,
  :class:`EngineSpec`; :class:`CertifyRun`, :class:`PredictRun`, :class:`AttackRun`,
  :class:`TrainRun`, :class:`DenoiserTrainRun`.
- runs: :func:`run_certify`, :func:`run_predict`, :func:`run_attack`, :func:`run_train`,
  :func:`run_train_denoiser`, :func:`quickstart`.
- dataset level, for a classifier already in memory: :func:`certify_dataset`,
  :func:`predict_dataset` (:mod:`~smoothcert.runs.certify`), :func:`attack_dataset`
  (:mod:`~smoothcert.runs.attack`), :func:`select_indices`.

Example::

    from smoothcert.runs import CertifyRun, ClassifierSpec, Selection, run_certify

    run_certify(CertifyRun(model=ClassifierSpec(checkpoint="model.pt"), out="certify.tsv",
                           n0=100, n=10_000, alpha=0.001, select=Selection(skip=20)))
"""

from .attack import ATTACKS, attack_columns, attack_dataset, l2_radius
from .certify import (
    PREDICT_COLUMNS,
    certify_dataset,
    certify_margin_dataset,
    check_pack,
    predict_dataset,
    select_indices,
)
from .classifier import (
    load_base,
    load_classifier,
    load_dataset,
    load_split,
    resolve_device,
    run_facts,
    smoothed_classifier,
    smoothing_noise,
    wire_denoiser,
)
from .demo import QuickstartResult, quickstart
from .importing import run_import
from .launch import run_attack, run_certify, run_predict
from .settings import (
    CERTIFICATES,
    DEFAULT_RADII,
    AttackRun,
    CertifyRun,
    ClassifierSpec,
    DataSpec,
    DenoiserSpec,
    DenoiserTrainRun,
    EngineSpec,
    ImportRun,
    PredictRun,
    Selection,
    TrainRun,
    training_method,
)
from .soft import SOFT_CERTIFICATES, certify_clean_class_dataset, certify_soft_dataset, deterministic_dataset
from .training import (
    TRAIN_DEFAULTS,
    InitCheckpoint,
    check_backbone_input,
    check_finetune,
    read_init,
    run_train,
    run_train_denoiser,
    train_defaults,
)

__all__ = [
    "ATTACKS",
    "CERTIFICATES",
    "DEFAULT_RADII",
    "PREDICT_COLUMNS",
    "SOFT_CERTIFICATES",
    "TRAIN_DEFAULTS",
    "AttackRun",
    "CertifyRun",
    "ClassifierSpec",
    "DataSpec",
    "DenoiserSpec",
    "DenoiserTrainRun",
    "EngineSpec",
    "ImportRun",
    "InitCheckpoint",
    "PredictRun",
    "QuickstartResult",
    "Selection",
    "TrainRun",
    "attack_columns",
    "attack_dataset",
    "certify_clean_class_dataset",
    "certify_dataset",
    "certify_margin_dataset",
    "certify_soft_dataset",
    "check_backbone_input",
    "check_finetune",
    "check_pack",
    "deterministic_dataset",
    "l2_radius",
    "load_base",
    "load_classifier",
    "load_dataset",
    "load_split",
    "predict_dataset",
    "quickstart",
    "read_init",
    "resolve_device",
    "run_attack",
    "run_import",
    "run_certify",
    "run_facts",
    "run_predict",
    "run_train",
    "run_train_denoiser",
    "select_indices",
    "smoothed_classifier",
    "smoothing_noise",
    "train_defaults",
    "training_method",
    "wire_denoiser",
]
