"""Certification results -> certified accuracy, ACR, paired comparisons, tables, plots and attack
summaries. Result files are read through :mod:`smoothcert.results` (its one reader and its rule
for damaged files); this package only computes.

Modules: :mod:`.load` (:class:`Results`, :func:`load_results`), :mod:`.metrics` (certified
accuracy, ACR, envelope), :mod:`.paired` (paired ACR difference with a t interval), :mod:`.tables`
(one table builder, markdown and LaTeX renderers), :mod:`.plots` (matplotlib, imported only when
plotting) and :mod:`.attack` (:class:`AttackSummary` of attack rows).
"""

from ..results import ResultsWarning, parse_time
from .attack import AttackSummary, Violation, find_violations, summarize_attack, summary_table
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
    "Envelope",
    "PairedDifference",
    "Results",
    "ResultsWarning",
    "Violation",
    "abstain_rate",
    "accuracy_table",
    "acr",
    "certified_accuracy",
    "certified_accuracy_interval",
    "clean_accuracy",
    "envelope",
    "find_violations",
    "latex_table",
    "load_results",
    "markdown_table",
    "paired_acr_difference",
    "parse_time",
    "plot_certified_accuracy",
    "summarize_attack",
    "summary",
    "summary_table",
]
