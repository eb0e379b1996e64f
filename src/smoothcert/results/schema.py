"""What a result row holds, per kind of run: its columns, how each field is written and read back,
and the settings a resumed run may change.

Every kind of run starts with the layout of Cohen et al. 2019's logs (``idx label predict radius
correct time``; PREDICT logs have no ``radius``), so analysis scripts written for their files read
ours; the columns after them record how each row was obtained.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..certificate import ABSTAIN
from ..errors import InputError

__all__ = [
    "ATTACKS",
    "CERTIFY",
    "GRID",
    "COHEN_COLUMNS",
    "COLUMNS",
    "DDN_CONFIRM_STEPS",
    "DETERMINISTIC",
    "MARGIN",
    "MAY_CHANGE",
    "NOT_TRACKED",
    "PREDICT",
    "PREDICT_COLUMNS",
    "RECHECK_ALPHA_DIVISOR",
    "SOFT_CERTIFY",
    "RowSchema",
    "attack_columns",
    "attack_schema",
    "certify_row",
    "deterministic_row",
    "eps_key",
    "field_parser",
    "format_time",
    "margin_row",
    "parse_int",
    "parse_time",
    "predict_row",
    "soft_certify_row",
]


@dataclass(frozen=True)
class RowSchema:
    """The header of one kind of result file: ``kind`` ("certify", "predict", "attack") and its
    ``columns``, Cohen et al.'s first."""

    kind: str
    columns: tuple[str, ...]

    def row(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` checked against the columns: every column present, nothing else."""
        missing = [c for c in self.columns if c not in values]
        extra = [k for k in values if k not in self.columns]
        if missing or extra:
            raise InputError(f"a {self.kind} row needs exactly the columns {list(self.columns)}; "
                             f"missing {missing}, unknown {extra}")
        return values


#: Cohen et al. 2019's certification log layout, the first columns of every certify and attack row.
COHEN_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time")

#: A CERTIFY row (``certify_dataset``): Cohen's layout, then how the certificate was obtained.
CERTIFY = RowSchema("certify", (
    *COHEN_COLUMNS,
    "p_lower", "count_a", "count_b", "n", "n0", "alpha",
    "noise", "sigma", "norm", "precision", "seconds",
))  # fmt: skip
COLUMNS: tuple[str, ...] = CERTIFY.columns

#: A staged CERTIFY row (``certify_dataset`` with ``target="grid"``, :func:`smoothcert.adaptive.certify_at`):
#: the CERTIFY columns, then ``alpha_look``, the level of each of the staged tests (alpha split evenly over
#: the stages); ``alpha`` stays the per-input failure probability of all looks together. Grid files written
#: before this column existed keep the CERTIFY header when they are resumed.
GRID = RowSchema("grid", (*CERTIFY.columns, "alpha_look"))

#: A PREDICT row (``predict_dataset``): Cohen et al.'s predict log layout, then how it was obtained.
PREDICT = RowSchema("predict", ("idx", "label", "predict", "correct", "time", "n", "alpha", "noise", "sigma",
                                "precision"))
PREDICT_COLUMNS: tuple[str, ...] = PREDICT.columns

#: A margin-certificate row (``certify_margin_dataset``, FaRS with a linear head): Cohen's layout,
#: then ``feature_radius`` (min_j (l_y - l_j) / ||w_y - w_j||_2, the exact l2 distance of the
#: features to the head's nearest decision boundary; ``radius`` = feature_radius / lipschitz),
#: ``lipschitz`` (the backbone's proven bound L, input to features), ``norm`` (always l2),
#: ``precision`` and ``seconds``. The certificate is deterministic: there is no p_lower, no counts,
#: no n and no alpha, and ``predict`` is never ABSTAIN. Feature-space smoothing writes
#: :data:`CERTIFY` rows (its statistics are CERTIFY's).
MARGIN = RowSchema("margin", (*COHEN_COLUMNS, "feature_radius", "lipschitz", "norm", "precision", "seconds"))
#: A soft-classifier certificate row (:func:`smoothcert.soft.certify_soft`): Cohen's layout (the
#: ``radius`` is certified: phi or L-bound of the smoothed soft classifier G), then the confidence
#: bounds it came from (``g_lower`` on G_A, ``g_upper`` on the largest other G_c), the certificate
#: (``soft-phi`` / ``soft-lbound``), the kind of confidence bound and how the class was chosen.
SOFT_CERTIFY = RowSchema("soft-certify", (
    *COHEN_COLUMNS,
    "g_lower", "g_upper", "n", "n0", "alpha", "certificate", "bound_method", "selection",
    "noise", "sigma", "norm", "precision", "seconds",
))  # fmt: skip

#: The one-pass HeatSmoothing heuristic (:func:`smoothcert.soft.deterministic_radius`). **Not a
#: certificate**: there is no ``radius`` column, so no certified-accuracy reader takes these rows;
#: the number sits in ``heuristic_radius`` (the bound computed from the network's own softmax as if
#: it were its Gaussian average) beside the softmax's top two values.
DETERMINISTIC = RowSchema("deterministic", (
    "idx", "label", "predict", "heuristic_radius", "correct", "time",
    "p_top", "p_second", "bound", "sigma", "precision", "seconds",
))  # fmt: skip

#: ``count_b`` of a row whose runner-up count was not tracked (``certify_at`` decisions on a grid).
NOT_TRACKED = -1

#: Settings recorded with a run that may change when it is resumed (or when its part files are
#: merged). They change how each random stream is cut into noise draws — batch size, inputs per
#: engine call (``pack``) or per attack batch (``attack_batch``: inputs attacked together share the
#: stream of the directions that replace zero gradients), device type — or only the speed (memory
#: layout, padding to a fixed shape, the automatic batch size's limits), so a resumed row may differ
#: from an uninterrupted run's but not in what is certified or attacked. ``compile`` is not among
#: them: compiled kernels may round differently, and a certificate is for the network as evaluated.
#: One tuple for every kind of run: a key a run does not record is never compared.
MAY_CHANGE: tuple[str, ...] = (
    "batch_size", "pack", "attack_batch", "device", "channels_last", "fixed_shape", "max_batch_bytes",
    "auto_batch_memory_fraction", "auto_batch_multiple", "auto_batch_max_rows",
)  # fmt: skip

# ------------------------------------------------------------------------------- attack rows

#: Values of an attack run's ``attack``: PGD at each eps, DDN (minimal distances), or both.
ATTACKS = ("pgd", "ddn", "both")

#: A violation found by an attack is re-checked at level alpha / this (CERTIFY and PREDICT both);
#: the ``recheck_radius`` and ``confirmed`` columns hold the verdict.
RECHECK_ALPHA_DIVISOR = 100

#: DDN on a smoothed model keeps the smallest iterate its noisy soft estimate called adversarial,
#: which tends to sit just inside g's boundary (on the embedded-MNIST quickstart model, 100 DDN
#: steps with m = 8: PREDICT confirmed 3 of 100 such points; at 20 steps, 49). So its perturbation
#: is scaled by (1 + DDN's gamma)^k, k = 0 .. this, until PREDICT confirms (up to 1.28x the length);
#: the ``ddn`` column is PREDICT's answer at the point where that stopped.
DDN_CONFIRM_STEPS = 5


def eps_key(eps: float) -> str:
    """How an attack budget appears in a column name: ``pgd@0.25`` (``repr`` of the float)."""
    return repr(float(eps))


def attack_columns(eps: Sequence[float], attack: str) -> tuple[str, ...]:
    """The header of an attack result file: ``idx label predict radius correct time`` (``radius``:
    the certified l2 radius), then per eps ``pgd@EPS`` (prediction at the PGD point; -1 = abstain)
    and ``pgd_l2@EPS`` (its distance); for DDN ``ddn`` / ``ddn_l2`` (the same for DDN's point — for
    a smoothed model, the point PREDICT confirmed, see :data:`DDN_CONFIRM_STEPS`), ``min_l2``
    (``ddn_l2`` where that answer is a class other than the label, 0 where the clean answer already
    is, else inf; abstentions never) and ``ddn_abstain_l2`` (the shortest point of DDN's
    confirmation path where PREDICT abstained, else inf); then ``recheck_radius`` (the l2 radius of
    the re-check's CERTIFY, 0 if it certified another class or abstained, nan where no violation
    needed a re-check) and ``confirmed`` (the violations that survived it, as ``pgd@EPS`` / ``ddn``
    joined by ``;``, or ``-``); then ``m n n0 n_predict recheck_n alpha noise sigma norm native_norm
    radius_native steps seconds`` (``norm`` is always l2, the norm of ``radius``; ``radius_native``
    is the certificate in the noise's own norm ``native_norm``)."""
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    cols = list(COHEN_COLUMNS)
    if attack in ("pgd", "both"):
        for e in eps:
            cols += [f"pgd@{eps_key(e)}", f"pgd_l2@{eps_key(e)}"]
    if attack in ("ddn", "both"):
        cols += ["ddn", "ddn_l2", "min_l2", "ddn_abstain_l2"]
    return (*cols, "recheck_radius", "confirmed", "m", "n", "n0", "n_predict", "recheck_n", "alpha", "noise",
            "sigma", "norm", "native_norm", "radius_native", "steps", "seconds")


def attack_schema(eps: Sequence[float], attack: str) -> RowSchema:
    """The :class:`RowSchema` of an attack run (:func:`attack_columns`)."""
    return RowSchema("attack", attack_columns(eps, attack))


# ------------------------------------------------------------------------------ field codecs

# str(datetime.timedelta): "H:MM:SS", "H:MM:SS.ffffff", "D day(s), H:MM:SS[.ffffff]".
_TIMEDELTA = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def format_time(seconds: float) -> str:
    """Cohen et al.'s ``time`` column: ``str(timedelta)``, e.g. ``0:00:01.234567``."""
    return str(datetime.timedelta(seconds=float(seconds)))


def parse_time(text: str) -> float:
    """Seconds in a ``time`` field: ``str(datetime.timedelta)`` or a plain number of seconds (some
    of Cohen et al.'s published CIFAR-10 logs use that form).

    >>> parse_time("0:02:31.5")
    151.5
    >>> parse_time("1 day, 0:00:01")
    86401.0
    >>> parse_time("15.4")
    15.4
    """
    text = text.strip()
    m = _TIMEDELTA.match(text)
    if m:
        days, hours, minutes, secs = m.groups()
        return (int(days) if days else 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(secs)
    try:
        return float(text)
    except ValueError:
        raise InputError(f"cannot parse time {text!r}: expected H:MM:SS[.ffffff] or seconds") from None


def parse_int(text: str) -> int:
    """An integer field; exact floats (``3.0``, as other tools sometimes write them) are accepted."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise InputError(f"expected an integer, got {text!r}") from None
        return int(value)


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"expected a number, got {text!r}") from None


_INT_FIELDS = ("idx", "label", "predict", "correct", "count_a", "count_b", "n", "n0", "m", "n_predict",
               "recheck_n", "steps", "ddn")
_FLOAT_FIELDS = ("alpha_look", "radius", "feature_radius", "lipschitz", "p_lower", "alpha", "sigma", "seconds", "ddn_l2", "min_l2",
                 "ddn_abstain_l2", "recheck_radius", "radius_native", "g_lower", "g_upper", "heuristic_radius",
                 "p_top", "p_second")
_TEXT_FIELDS = ("noise", "norm", "precision", "native_norm", "confirmed", "certificate", "bound_method", "selection",
                "bound")

#: How the text of each known column reads back.
FIELD_TYPES: dict[str, Callable[[str], Any]] = {
    **dict.fromkeys(_INT_FIELDS, parse_int),
    **dict.fromkeys(_FLOAT_FIELDS, _parse_float),
    **dict.fromkeys(_TEXT_FIELDS, str),
    "time": parse_time,
}


def field_parser(name: str) -> Callable[[str], Any] | None:
    """The reader of column ``name`` (``pgd@EPS`` / ``pgd_l2@EPS`` included), or None for a column
    no schema defines (a foreign file's extra column: its type is inferred from its values)."""
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    if name.startswith("pgd@"):
        return parse_int
    if name.startswith("pgd_l2@"):
        return _parse_float
    return None


# -------------------------------------------------------------------------------- row builders


def certify_row(
    *, idx: int, label: int, predict: int, radius: float, p_lower: float, count_a: int, count_b: int | None,
    n: int, n0: int, alpha: float, noise: str, sigma: float, norm: str, precision: str, seconds: float,
) -> dict[str, Any]:
    """A :data:`CERTIFY` row; ``correct`` and ``time`` follow from ``predict``/``label`` and
    ``seconds``. ``count_b=None`` (a decision that does not track the runner-up, e.g.
    ``certify_at``) is written as :data:`NOT_TRACKED`."""
    return CERTIFY.row({
        "idx": int(idx), "label": int(label), "predict": int(predict), "radius": float(radius),
        "correct": int(predict == label), "time": format_time(seconds), "p_lower": float(p_lower),
        "count_a": int(count_a), "count_b": NOT_TRACKED if count_b is None else int(count_b), "n": int(n),
        "n0": int(n0), "alpha": alpha, "noise": noise, "sigma": sigma, "norm": norm, "precision": precision,
        "seconds": float(seconds),
    })  # fmt: skip


def predict_row(
    *, idx: int, label: int, predict: int, n: int, alpha: float, noise: str, sigma: float, precision: str,
    seconds: float,
) -> dict[str, Any]:
    """A :data:`PREDICT` row; an abstention (``predict == ABSTAIN``) is not correct."""
    return PREDICT.row({
        "idx": int(idx), "label": int(label), "predict": int(predict),
        "correct": int(predict != ABSTAIN and predict == label), "time": format_time(seconds), "n": int(n),
        "alpha": alpha, "noise": noise, "sigma": sigma, "precision": precision,
    })  # fmt: skip


def margin_row(
    *, idx: int, label: int, predict: int, radius: float, feature_radius: float, lipschitz: float, precision: str,
    seconds: float,
) -> dict[str, Any]:
    """A :data:`MARGIN` row (``radius`` as computed, feature_radius / lipschitz: recomputing it here
    could round it up); ``correct`` and ``time`` follow from the others."""
    return MARGIN.row({
        "idx": int(idx), "label": int(label), "predict": int(predict),
        "radius": float(radius), "correct": int(predict == label),
        "time": format_time(seconds), "feature_radius": float(feature_radius), "lipschitz": float(lipschitz),
        "norm": "l2", "precision": precision, "seconds": float(seconds),
    })  # fmt: skip


def soft_certify_row(
    *, idx: int, label: int, predict: int, radius: float, g_lower: float, g_upper: float, n: int, n0: int,
    alpha: float, certificate: str, bound_method: str, selection: str, noise: str, sigma: float, precision: str,
    seconds: float,
) -> dict[str, Any]:
    """A :data:`SOFT_CERTIFY` row (l2 ``norm``); an abstention (``predict == ABSTAIN``) is not correct."""
    return SOFT_CERTIFY.row({
        "idx": int(idx), "label": int(label), "predict": int(predict), "radius": float(radius),
        "correct": int(predict != ABSTAIN and predict == label), "time": format_time(seconds),
        "g_lower": float(g_lower), "g_upper": float(g_upper), "n": int(n), "n0": int(n0), "alpha": alpha,
        "certificate": certificate, "bound_method": bound_method, "selection": selection, "noise": noise,
        "sigma": sigma, "norm": "l2", "precision": precision, "seconds": float(seconds),
    })  # fmt: skip


def deterministic_row(
    *, idx: int, label: int, predict: int, heuristic_radius: float, p_top: float, p_second: float, bound: str,
    sigma: float, precision: str, seconds: float,
) -> dict[str, Any]:
    """A :data:`DETERMINISTIC` row: the one-pass heuristic, never a certified radius."""
    return DETERMINISTIC.row({
        "idx": int(idx), "label": int(label), "predict": int(predict), "heuristic_radius": float(heuristic_radius),
        "correct": int(predict == label), "time": format_time(seconds), "p_top": float(p_top),
        "p_second": float(p_second), "bound": bound, "sigma": sigma, "precision": precision,
        "seconds": float(seconds),
    })  # fmt: skip
