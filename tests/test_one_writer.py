"""One writer per result file, output paths checked before any work, no silent empty or partial
selections (issue #16, section 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smoothcert.cli import main
from smoothcert.errors import InputError, ResultFileError
from smoothcert.files import FileLock, check_output_path, lock_path
from smoothcert.results import ResultWriter, result_rows
from smoothcert.runs.classifier import resolve_device
from smoothcert.runs.settings import Selection

CONFIG = {"model": "m", "n": 10}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_two_writers_in_one_process_exclude_each_other(tmp_path):
    out = tmp_path / "run.tsv"
    with ResultWriter(out, config=CONFIG):
        with pytest.raises(ResultFileError, match=r"run\.tsv is being written by another run"):
            ResultWriter(out, config=CONFIG)
        with pytest.raises(ResultFileError, match="another run"), result_rows(out, config=CONFIG, indices=[0, 1]):
            pass
    with ResultWriter(out, config=CONFIG):  # released on close
        assert lock_path(out).exists()
    assert not lock_path(out).exists()  # and removed


def test_a_writer_in_another_process_is_refused_until_the_first_finishes(tmp_path):
    out = tmp_path / "run.tsv"
    holder = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from smoothcert.results import ResultWriter
        with ResultWriter({str(out)!r}, config={CONFIG!r}):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ResultFileError, match="another run"):
            ResultWriter(out, config=CONFIG)
    finally:
        proc.communicate("\n", timeout=60)
    with ResultWriter(out, config=CONFIG, wait=True):
        pass


def test_lock_waits_when_asked(tmp_path):
    lock = FileLock(tmp_path / "x.tsv").acquire()
    assert lock.held
    lock.release()
    with FileLock(tmp_path / "x.tsv", wait=True) as again:
        assert again.held


def test_output_paths_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultFileError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(ResultFileError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "run.tsv")
    with pytest.raises(ResultFileError, match="is a file, not a folder"):
        ResultWriter(tmp_path / "file" / "sub" / "run.tsv", config=CONFIG)
    assert check_output_path(tmp_path / "a" / "b" / "run.tsv").parent.is_dir()


def test_selection_refuses_empty_and_negative_requests():
    with pytest.raises(InputError, match="max must be a positive number"):
        Selection(max_count=-5)
    with pytest.raises(InputError, match="max must be a positive number"):
        Selection(max_count=0)
    assert Selection(max_count=-1).max_count is None
    with pytest.raises(InputError, match="1000 inputs"):
        Selection(start=1000).indices(1000)
    assert Selection(start=999).indices(1000) == [999]


def test_unknown_device_is_one_line():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_cli_version_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "smoothcert 0.1" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    code = main(["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--epochs", "1",
                 "--limit", "64", "--quiet", "--device", "cpu", "--out", str(tmp_path / "file" / "m.pt")])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
    code = main(["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--epochs", "1",
                 "--limit", "0", "--quiet", "--device", "cpu", "--out", str(tmp_path / "m.pt")])
    assert code == 2
    assert main(["analyze", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_certify_projects_the_time_of_the_rest_after_the_first_input(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--epochs", "1",
                 "--limit", "64", "--quiet", "--device", "cpu", "--out", str(ckpt)]) == 0
    base = ["certify", "--checkpoint", str(ckpt), "--n0", "10", "--n", "32", "--alpha", "0.01", "--batch", "50",
            "--device", "cpu"]
    assert main([*base, "--max", "3", "--out", str(tmp_path / "r.tsv")]) == 0
    assert "the other 2 inputs will take about" in capsys.readouterr().err
    assert main([*base, "--max", "0", "--out", str(tmp_path / "z.tsv")]) == 2
    assert "max must be a positive number" in capsys.readouterr().err
    assert main([*base, "--start", "5000", "--out", str(tmp_path / "z.tsv")]) == 2
    assert "1000 inputs" in capsys.readouterr().err
    assert main([*base, "--max", "2", "--device", "tpu", "--out", str(tmp_path / "z.tsv")]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main([*base, "--max", "2", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_analyze_and_plot_refuse_a_repeated_idx(tmp_path, capsys):
    # Issue #16: two runs on one file once left 120 rows for 60 inputs and changed the table.
    path = tmp_path / "dup.tsv"
    rows = ["idx\tlabel\tpredict\tradius\tcorrect\ttime", "0\t1\t1\t0.5\t1\t0:00:01", "3\t1\t1\t0.5\t1\t0:00:01",
            "0\t1\t1\t0.7\t1\t0:00:01"]
    path.write_text("\n".join(rows) + "\n")
    assert main(["analyze", str(path)]) == 2
    assert "idx" in capsys.readouterr().err
    assert main(["plot", str(path), "--out", str(tmp_path / "p.png")]) == 2
    assert "idx" in capsys.readouterr().err
