"""Certification results -> certified accuracy, ACR, paired comparisons, tables, plots and attack
summaries. Result files are read through :mod:`smoothcert.results` (its one reader and its rule
for damaged files); this package only computes.

Modules: :mod:`.load` (:class:`Results`, :func:`load_results`), :mod:`.metrics` (certified
accuracy, ACR, envelope), :mod:`.paired` (paired ACR difference with a t interval), :mod:`.tables`
(one table builder, markdown and LaTeX renderers), :mod:`.plots` (matplotlib, imported only when
plotting), :mod:`.attack` (:class:`AttackSummary` of attack rows) and :mod:`.distances` (minimal
adversarial distances and L-bounds in the HeatSmoothing paper's Table 3/5 layout).
"""

from ..results import ResultsWarning, parse_time
from .attack import AttackSummary, Violation, find_violations, summarize_attack, summary_table
from .distances import (
    DistanceSummary,
    RobustnessRow,
    attacked_curve,
    ddn_distances,
    distance_summary,
    pgd_distances,
    robustness_row,
    robustness_table,
)
from .load import ABSTAIN, REQUIRED_COLUMNS, Results, load_results
from .metrics import (
    Envelope,
    abstain_rate,
    acr,
    certified_accuracy,
    certified_accuracy_interval,
    clean_accuracy,
    envelope,
    summary,
)
from .paired import PairedDifference, paired_acr_difference
from .plots import plot_certified_accuracy
from .tables import AccuracyTable, accuracy_table, latex_table, markdown_table

__all__ = [
    "ABSTAIN",
    "REQUIRED_COLUMNS",
    "AccuracyTable",
    "AttackSummary",
    "DistanceSummary",
    "Envelope",
    "PairedDifference",
    "Results",
    "RobustnessRow",
    "ResultsWarning",
    "Violation",
    "abstain_rate",
    "accuracy_table",
    "acr",
    "attacked_curve",
    "certified_accuracy",
    "certified_accuracy_interval",
    "clean_accuracy",
    "ddn_distances",
    "distance_summary",
    "envelope",
    "find_violations",
    "latex_table",
    "load_results",
    "markdown_table",
    "paired_acr_difference",
    "parse_time",
    "pgd_distances",
    "plot_certified_accuracy",
    "robustness_row",
    "robustness_table",
    "summarize_attack",
    "summary",
    "summary_table",
]
