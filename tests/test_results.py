"""Result files: flushed rows, resume after an interrupt, refusal to mix configurations."""

import pytest

from smoothcert.results import COLUMNS, ConfigMismatchError, ResultWriter, format_time

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
