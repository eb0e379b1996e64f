"""Result files: flushed rows, resume after an interrupt, refusal to mix configurations, and the one
rule for reading them (a torn last row is left out with a warning; anything else malformed, or a
repeated idx, is an error) in every reader; files written by earlier versions."""

import json
import math
import shutil
from pathlib import Path

import pytest

from smoothcert.analysis import load_results, summarize_attack
from smoothcert.cli import main
from smoothcert.results import (
    COLUMNS,
    MAY_CHANGE,
    ConfigMismatchError,
    ResultFileError,
    ResultsWarning,
    ResultWriter,
    attack_columns,
    find_parts,
    format_time,
    merge_result_parts,
    part_path,
    read_table,
)

CONFIG = {"noise": "gaussian", "sigma": 0.25, "n": 1000, "batch": 100}


def _row(i: int) -> dict:
    return {c: 0 for c in COLUMNS} | {"idx": i, "radius": 0.5 + i, "time": format_time(1.5), "noise": "gaussian"}


def _rows(path):
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def test_cohen_layout_first(tmp_path):
    path = tmp_path / "out" / "run.tsv"
    with ResultWriter(path, config=CONFIG) as w:
        w.write(_row(0))
        w.write(_row(20))
    header, rows = _rows(path)
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [r[0] for r in rows] == ["0", "20"] and rows[0][5] == "0:00:01.500000"
    assert (tmp_path / "out" / "run.tsv.json").exists()


def test_rows_are_flushed_before_close(tmp_path):
    path = tmp_path / "run.tsv"
    w = ResultWriter(path, config=CONFIG)
    w.write(_row(3))
    assert path.read_text().count("\n") == 2  # visible to another reader while still open
    w.close()


def test_resume_repairs_a_half_written_row_and_skips_done(tmp_path):
    path = tmp_path / "run.tsv"
    with ResultWriter(path, config=CONFIG) as w:
        for i in range(3):
            w.write(_row(i))
    with open(path, "a") as f:
        f.write("3\t1\t1\t0.2")  # killed mid-row
    with pytest.warns(ResultsWarning, match="line 5 has no newline"):
        w = ResultWriter(path, config=CONFIG | {"batch": 7}, ignore=("batch",))
    assert w.done == {0, 1, 2}
    for i in range(5):
        if i not in w.done:
            w.write(_row(i))
    w.close()
    _, rows = _rows(path)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    assert all(len(r) == len(COLUMNS) for r in rows)


def test_interrupted_header_is_rewritten(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_text("idx\tlab")
    (tmp_path / "run.tsv.json").write_text('{"noise": "gaussian", "sigma": 0.25, "n": 1000, "batch": 100}')
    with ResultWriter(path, config=CONFIG) as w:
        assert w.done == set()
        w.write(_row(0))
    header, rows = _rows(path)
    assert header == list(COLUMNS) and len(rows) == 1


def test_refuses_a_different_configuration(tmp_path):
    path = tmp_path / "run.tsv"
    with ResultWriter(path, config=CONFIG) as w:
        w.write(_row(0))
    with pytest.raises(ConfigMismatchError, match=r"sigma: file has 0.25, now 0.5"):
        ResultWriter(path, config=CONFIG | {"sigma": 0.5})
    before = path.read_text()
    assert before.startswith("idx\t")  # nothing lost


def test_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "cohen.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
    with pytest.raises(ConfigMismatchError, match="refusing to append"):
        ResultWriter(path, config=CONFIG)
    assert path.read_text().endswith("0:00:01\n")


def test_a_file_without_rows_takes_the_new_configuration(tmp_path):
    # e.g. the first attempt was refused for a bad argument after the header was written
    path = tmp_path / "run.tsv"
    ResultWriter(path, config=CONFIG).close()
    with ResultWriter(path, config=CONFIG | {"sigma": 0.5}) as w:
        w.write(_row(0))
    assert '"sigma": 0.5' in (tmp_path / "run.tsv.json").read_text()


def test_floats_are_written_exactly(tmp_path):
    path = tmp_path / "run.tsv"
    value = 0.12345678901234567
    with ResultWriter(path, config=CONFIG) as w:
        w.write(_row(0) | {"radius": value})
    assert float(_rows(path)[1][0][3]) == value


# ------------------------------------------------------------------ one reader, one rule for damage

LEGACY = Path(__file__).parent / "data" / "legacy"


def _certified(path, idx=(0, 1, 2)):
    with ResultWriter(path, config=CONFIG) as w:
        for i in idx:
            w.write(_row(i))
    return path


def _merge_with_a_part(path):
    _certified(part_path(path, 0, 2), idx=(7,))
    return merge_result_parts(path)


def _analyze(path):
    assert main(["analyze", str(path)]) == 0


def _plot(path):
    assert main(["plot", str(path), "--out", str(path.with_suffix(".png"))]) == 0


READERS = {
    "read_table": read_table,
    "writer": lambda p: ResultWriter(p, config=CONFIG).close(),
    "merge": _merge_with_a_part,
    "load_results": load_results,
    "summarize_attack": summarize_attack,
}


def test_a_torn_last_row_is_left_out_with_a_warning_even_when_it_parses(tmp_path):
    path = _certified(tmp_path / "run.tsv")
    whole = path.read_text()
    complete_looking = "\t".join(whole.splitlines()[-1].split("\t")[:-1] + ["0.0"])  # every field parses
    path.write_text(whole + complete_looking.replace("2\t", "3\t", 1))
    with pytest.warns(ResultsWarning, match=r"run.tsv: line 5 has no newline"):
        table = read_table(path)
    assert table.idx == [0, 1, 2] and table.torn_line == 5 and table.end == len(whole.encode())
    with pytest.warns(ResultsWarning, match="line 5"):
        assert len(load_results(path)) == 3
    with pytest.warns(ResultsWarning, match="cut off"), ResultWriter(path, config=CONFIG) as w:
        assert w.done == {0, 1, 2}  # the writer repairs it: cut off, done again
    assert path.read_text() == whole


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("damage", ["fields", "value"])
def test_a_malformed_middle_row_is_an_error_naming_file_and_line(tmp_path, reader, damage):
    path = _certified(tmp_path / "run.tsv")
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[2].split("\t")
    if damage == "fields":
        fields = fields[:4]
        fields[-1] += "\n"
    else:
        fields[3] = "0.2x"  # the radius of idx 1
    lines[2] = "\t".join(fields)
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(ResultFileError, match=r"run.tsv, line 3"):
        READERS[reader](path)
    assert path.read_bytes() == before  # nothing repaired or rewritten


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_repeated_idx_is_an_error_naming_the_file(tmp_path, reader):
    path = _certified(tmp_path / "run.tsv")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[2]]))
    with pytest.raises(ResultFileError, match=r"run.tsv: idx 1 appears twice \(lines 3 and 5\)"):
        READERS[reader](path)


@pytest.mark.parametrize("command", [_analyze, _plot, "merge"])
def test_the_cli_refuses_a_repeated_idx(tmp_path, capsys, command):
    path = _certified(tmp_path / "run.tsv")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[1]]))
    if command == "merge":
        _certified(part_path(path, 1, 2), idx=(9,))
        assert main(["merge", str(path)]) == 2
        assert find_parts(path)  # nothing merged, nothing lost
    else:
        assert main([command.__name__[1:], str(path)] + (["--out", str(tmp_path / "c.png")]
                                                          if command is _plot else [])) == 2
    assert "run.tsv: idx 0 appears twice" in capsys.readouterr().err


def test_the_writer_never_writes_a_repeated_idx(tmp_path):
    with ResultWriter(tmp_path / "run.tsv", config=CONFIG) as w:
        w.write(_row(4))
        with pytest.raises(ValueError, match="already has a row for idx 4"):
            w.write(_row(4))


def test_one_may_change_for_every_kind_of_run(tmp_path):
    # The union of what certify/predict and attack runs allowed before: speed-only engine settings and
    # how streams are cut. An attack run may now also be resumed with another fixed_shape (speed only).
    assert {"batch_size", "pack", "device", "attack_batch", "fixed_shape", "auto_batch_max_rows"} <= set(MAY_CHANGE)
    assert "compile" not in MAY_CHANGE and "precision" not in MAY_CHANGE
    config = json.loads((LEGACY / "attack.tsv.json").read_text())
    path = tmp_path / "attack.tsv"
    shutil.copy(LEGACY / "attack.tsv", path)
    shutil.copy(LEGACY / "attack.tsv.json", tmp_path / "attack.tsv.json")
    columns = attack_columns(config["eps"], config["attack"])
    with ResultWriter(path, config=config | {"fixed_shape": True, "attack_batch": 4}, columns=columns) as w:
        assert w.done == {0, 1, 2}
    with pytest.raises(ConfigMismatchError, match="precision"):
        ResultWriter(path, config=config | {"precision": "bf16"}, columns=columns)


# ------------------------------------------------------------------------ files of earlier versions


def _raw(path):
    """The file by plain splitting, independently of the reader: header and rows of strings."""
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.mark.parametrize("name", sorted(p.name for p in LEGACY.glob("*.tsv")))
def test_legacy_files_read_through_the_one_reader(name, tmp_path):
    path = LEGACY / name
    header, rows = _raw(path)
    table = read_table(path)
    assert list(table.columns) == header and len(table) == len(rows)
    for k, column in enumerate(header):
        expected = [r[k] for r in rows]
        got = table.values[column]
        if column == "time":
            assert got == pytest.approx([float(t.split(":")[-1]) + 60 * int(t.split(":")[1]) for t in expected])
        elif isinstance(got[0], str):
            assert got == expected
        else:
            assert all((math.isnan(g) and e == "nan") or g == float(e) for g, e in zip(got, expected, strict=True))
    # and each resumes with its own sidecar and header: every row done, nothing rewritten
    config = json.loads((LEGACY / (name + ".json")).read_text())
    before = path.read_bytes()
    copy = tmp_path / name
    shutil.copy(path, copy)
    shutil.copy(LEGACY / (name + ".json"), tmp_path / (name + ".json"))
    with ResultWriter(copy, config=config, columns=tuple(header)) as w:
        assert w.done == {int(r[0]) for r in rows}
    assert copy.read_bytes() == before
