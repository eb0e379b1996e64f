"""The one owner of result files: row schemas per kind of run (:mod:`.schema`), the writer with its
configuration sidecar, resume and repair (:mod:`.writer`), the per-image rows of super-resolution
runs (:mod:`.superres`), the reader (:mod:`.reader`) and the part
files of sharded runs with their merge (:mod:`.parts`).

Every file is read by one rule (:func:`read_table`): a torn last row — no newline, an interrupted
write — is left out with a warning (the writer cuts it off and does the input again); any other
malformed row, or an ``idx`` that appears twice, is a :class:`~smoothcert.errors.ResultFileError`
naming the file and the line.
"""

from ..errors import ConfigMismatchError, ResultFileError
from .parts import find_parts, merge_result_parts, part_path, result_rows
from .reader import ResultsWarning, ResultTable, read_table
from .schema import (
    ATTACKS,
    CERTIFY,
    COHEN_COLUMNS,
    COLUMNS,
    DDN_CONFIRM_STEPS,
    DETERMINISTIC,
    GRID,
    MARGIN,
    MAY_CHANGE,
    NOT_TRACKED,
    PREDICT,
    PREDICT_COLUMNS,
    RECHECK_ALPHA_DIVISOR,
    SOFT_CERTIFY,
    RowSchema,
    attack_columns,
    attack_schema,
    certify_row,
    deterministic_row,
    eps_key,
    field_parser,
    format_time,
    margin_row,
    parse_int,
    parse_time,
    predict_row,
    soft_certify_row,
)
from .superres import (
    SR_ATTACK_KIND,
    SR_CERTIFY_KIND,
    SR_EVALUATE_KIND,
    sr_attack_schema,
    sr_certify_schema,
    sr_evaluate_schema,
)
from .writer import ResultWriter, config_diff, normalise_config, read_config, sidecar_path, sidecar_text

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
    "SR_ATTACK_KIND",
    "SR_CERTIFY_KIND",
    "SR_EVALUATE_KIND",
    "ConfigMismatchError",
    "ResultFileError",
    "ResultTable",
    "ResultWriter",
    "ResultsWarning",
    "RowSchema",
    "attack_columns",
    "attack_schema",
    "certify_row",
    "config_diff",
    "deterministic_row",
    "eps_key",
    "field_parser",
    "find_parts",
    "format_time",
    "margin_row",
    "merge_result_parts",
    "normalise_config",
    "parse_int",
    "parse_time",
    "part_path",
    "predict_row",
    "read_config",
    "read_table",
    "result_rows",
    "sidecar_path",
    "sidecar_text",
    "soft_certify_row",
    "sr_attack_schema",
    "sr_certify_schema",
    "sr_evaluate_schema",
]
