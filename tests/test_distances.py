"""The Table 3/5 summary (smoothcert.analysis.distances) on hand-written rows: exact medians, means,
curves and the markdown layout; bad input."""

import math

import pytest

from smoothcert.analysis import (
    attacked_curve,
    ddn_distances,
    distance_summary,
    pgd_distances,
    robustness_row,
    robustness_table,
)
from smoothcert.errors import InputError

INF = math.inf


def _row(idx, label, correct, pgd, min_l2):
    """An attack row with the columns the summary reads: PGD at eps 0.5 / 1 / 2, DDN's min_l2."""
    r = {"idx": idx, "label": label, "predict": label if correct else (label + 1) % 10, "correct": int(correct),
         "min_l2": min_l2}
    for e, p in zip(("0.5", "1", "2"), pgd, strict=True):
        r[f"pgd@{e}"] = p
        r[f"pgd_l2@{e}"] = float(e)
    return r


ROWS = [
    _row(0, 3, True, [3, 5, 5], 0.8),  # broken at eps 1 (first class change), DDN 0.8
    _row(1, 7, True, [7, 7, 7], INF),  # never broken
    _row(2, 1, False, [2, 2, 2], 0.0),  # already wrong: distance 0
    _row(3, 4, True, [-1, 4, 9], 1.7),  # abstain at 0.5 is no class change; broken at 2
    _row(4, 0, True, [6, 6, 6], 0.3),  # broken at the smallest eps
]


def test_pgd_and_ddn_distances_from_attack_rows():
    assert pgd_distances(ROWS) == [1.0, INF, 0.0, 2.0, 0.5]
    assert ddn_distances(ROWS) == [0.8, INF, 0.0, 1.7, 0.3]


def test_summary_counts_failures_at_the_budget():
    s = distance_summary([1.0, INF, 0.0, 2.0, 0.5], budget=4.0)
    assert (s.count, s.found, s.budget) == (5, 4, 4.0)
    assert s.median == 1.0  # sorted 0, 0.5, 1, 2, 4
    assert s.mean == pytest.approx((0 + 0.5 + 1 + 2 + 4) / 5)
    # A distance beyond the budget is a failure too: capped, and not "found".
    s2 = distance_summary([5.0, 1.0], budget=4.0)
    assert (s2.found, s2.median, s2.mean) == (1, 2.5, 2.5)
    empty = distance_summary([], budget=1.0)
    assert empty.count == 0 and math.isnan(empty.median) and math.isnan(empty.mean)


def test_attacked_curve():
    d = [1.0, INF, 0.0, 2.0, 0.5]
    assert attacked_curve(d, [0.0, 0.5, 1.0, 1.5, 4.0]) == [0.2, 0.4, 0.6, 0.6, 0.8]
    assert math.isnan(attacked_curve([], [1.0])[0])


def test_robustness_table_layout():
    heat = robustness_row("heat", pgd=pgd_distances(ROWS), ddn=ddn_distances(ROWS), lbound=[0.1, 0.3, 0.2],
                          budget=4.0, lbound_kind="heuristic", attacked_as="network")
    assert (heat.lbound_median, heat.lbound_mean) == (0.2, pytest.approx(0.2))
    assert heat.pgd.found == 4 and heat.ddn.mean == pytest.approx((0.8 + 4 + 0 + 1.7 + 0.3) / 5)
    table = robustness_table([heat])
    assert table.splitlines()[0] == ("| model | L-bound (heuristic) median / mean | PGD median / mean (broken) | "
                                     "DDN median / mean (broken) | attacked as |")
    assert table.splitlines()[2] == "| heat | 0.200 / 0.200 | 1.000 / 1.500 (4/5) | 0.800 / 1.360 (4/5) | network |"
    gauss = robustness_row("gaussian", pgd=None, ddn=[0.5], lbound=[0.0], budget=4.0, lbound_kind="certified",
                           attacked_as="smoothed, m = 8")
    mixed = robustness_table([heat, gauss]).splitlines()
    assert "L-bound median / mean |" in mixed[0]
    assert mixed[3] == "| gaussian | 0.000 / 0.000 (certified) | — | 0.500 / 0.500 (1/1) | smoothed, m = 8 |"


def test_bad_input():
    with pytest.raises(InputError, match="budget"):
        distance_summary([1.0], budget=0.0)
    with pytest.raises(InputError, match="budget"):
        distance_summary([1.0], budget=INF)
    with pytest.raises(InputError, match=">= 0"):
        distance_summary([-1.0], budget=1.0)
    with pytest.raises(InputError, match=">= 0"):
        attacked_curve([math.nan], [1.0])
    with pytest.raises(InputError, match="lbound_kind"):
        robustness_row("m", pgd=None, ddn=None, lbound=[0.1], budget=1.0, lbound_kind="exact", attacked_as="x")
    with pytest.raises(InputError, match="PGD was not run"):
        pgd_distances([{"idx": 0, "label": 1, "correct": 1, "min_l2": 0.5}])
    with pytest.raises(InputError, match="DDN was not run"):
        ddn_distances([{"idx": 0, "label": 1, "correct": 1, "pgd@1": 1}])
