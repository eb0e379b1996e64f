"""Sharded runs: part files merged into one result file, the same rows as one process, resume
with any number of processes, and a failing rank that neither hangs the others nor loses their rows.

The end-to-end tests launch real processes with ``python -m torch.distributed.run`` (gloo, CPU);
each launch takes a few seconds, mostly importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from linear import LinearBinary
from torch.utils.data import TensorDataset

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.cli import main
from smoothcert.distributed import Shard, rank_device, shard_from_env
from smoothcert.runs.certify import certify_dataset
from smoothcert.results import (
    COLUMNS,
    ConfigMismatchError,
    ResultFileError,
    ResultWriter,
    find_parts,
    format_time,
    merge_result_parts,
    part_path,
)

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = {"noise": "gaussian", "sigma": 0.25, "n": 64, "batch_size": 50}


def _row(i: int, radius: float = 0.5) -> dict:
    return {c: 0 for c in COLUMNS} | {"idx": i, "radius": radius, "time": format_time(0.25), "noise": "gaussian"}


def _write(path: Path, rows: list[dict], config: dict = CONFIG, tail: str = "") -> None:
    with ResultWriter(path, config=config, ignore=("batch_size",)) as w:
        for r in rows:
            w.write(r)
    if tail:
        with open(path, "a") as f:
            f.write(tail)


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


# ----------------------------------------------------------------------------------- merge


def test_merge_folds_parts_and_existing_rows(tmp_path):
    out = tmp_path / "run.tsv"
    _write(out, [_row(0), _row(4, radius=0.75)])
    # a part of an interrupted 2-process run, killed mid-row, which repeats idx 4
    _write(part_path(out, 0, 2), [_row(2), _row(4, radius=0.1)], tail="6\t1\t1\t0.3")
    # and a part of a 3-process run (a relaunch with another size), with its batch size changed
    _write(part_path(out, 1, 3), [_row(5), _row(1)], config=CONFIG | {"batch_size": 20})
    assert [p.name for p in find_parts(out)] == ["run.tsv.part-0-of-2", "run.tsv.part-1-of-3"]

    assert merge_result_parts(out) == [0, 1, 2, 4, 5]
    header, rows = _table(out)
    assert header == list(COLUMNS)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 4, 5]  # sorted, one row per idx, no half row
    assert float(rows[3][3]) == 0.75  # the row already in --out wins over a duplicate
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert find_parts(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["run.tsv", "run.tsv.json"]
    assert json.loads((tmp_path / "run.tsv.json").read_text())["n"] == 64
    # the merged file resumes like any result file
    with ResultWriter(out, config=CONFIG, ignore=("batch_size",)) as w:
        assert w.done == {0, 1, 2, 4, 5}


def test_merge_refuses_a_different_configuration_and_touches_nothing(tmp_path):
    out = tmp_path / "run.tsv"
    _write(out, [_row(0)])
    _write(part_path(out, 1, 2), [_row(1)], config=CONFIG | {"n": 100})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigMismatchError, match=r"n: .* has 64, run.tsv.part-1-of-2 has 100"):
        merge_result_parts(out)
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        merge_result_parts(out, config=CONFIG | {"sigma": 0.5})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_merge_without_parts_leaves_the_file_alone_and_bad_rows_are_refused(tmp_path):
    out = tmp_path / "run.tsv"
    _write(out, [_row(3), _row(1)])
    before = out.read_bytes()
    assert merge_result_parts(out) == [1, 3]
    assert out.read_bytes() == before  # not rewritten (nor sorted) when there is nothing to merge
    part = part_path(out, 0, 2)
    _write(part, [_row(2)])
    with open(part, "a") as f:
        f.write("7\tonly three\tfields\n")
    with pytest.raises(ValueError, match="malformed row"):
        merge_result_parts(out)
    assert out.read_bytes() == before and part.exists()


# ------------------------------------------------------------------------ shards and ranks


def test_shards_cover_the_inputs_once_and_come_from_the_launcher(monkeypatch):
    todo = list(range(3, 40, 3))
    shares = [Shard(rank=r, world_size=4).take(todo) for r in range(4)]
    assert sorted(sum(shares, [])) == todo and max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank"):
        Shard(rank=2, world_size=2)

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert shard_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert shard_from_env() is None  # one process is a plain run
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    shard = shard_from_env()
    assert (shard.rank, shard.world_size, shard.local_rank) == (3, 4, 1)
    assert rank_device("cuda", shard) == torch.device("cuda", 1)  # one GPU per process
    assert rank_device("cuda:0", shard) == torch.device("cuda", 0)  # an explicit GPU is kept
    assert rank_device("cpu", shard) == torch.device("cpu")
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="RANK"):
        shard_from_env()


def test_packs_are_dealt_out_whole_and_only_what_is_left():
    indices = list(range(10, 24))  # packs of 4: [10..13] [14..17] [18..21] [22 23]
    done = {10, 11, 12, 13, 15, 22}  # the first pack is finished, two others partly
    shares = [Shard(rank=r, world_size=2).take_packs(indices, done, 4) for r in range(2)]
    assert sorted(sum(shares, [])) == [i for i in indices if i not in done]
    packs = [set(indices[k : k + 4]) for k in range(0, len(indices), 4)]
    for p in packs:  # every pack's remaining inputs on exactly one rank
        assert sum(bool(p & set(share)) for share in shares) <= 1
    assert shares == [[14, 16, 17, 23], [18, 19, 20, 21]]  # open packs 0 and 2 to rank 0, pack 1 to rank 1
    assert Shard(rank=1, world_size=3).take_packs(indices, done, 1) == Shard(rank=1, world_size=3).take(
        [i for i in indices if i not in done])


def test_a_single_process_run_resumes_from_part_files(tmp_path):
    torch.manual_seed(0)
    smoothed = SmoothedClassifier(LinearBinary(torch.randn(8), 0.1), noise=get_noise("gaussian", sigma=0.5),
                                  num_classes=2)
    x = torch.rand(6, 8)
    data = TensorDataset(x, (x @ torch.ones(8) > 4).long())
    kw = dict(n0=10, n=200, alpha=0.01, batch_size=64, seed=3, progress=False)
    ref, out = tmp_path / "ref.tsv", tmp_path / "run.tsv"
    certify_dataset(smoothed, data, ref, **kw)
    lines = ref.read_text().splitlines(keepends=True)
    # what a killed 2-process run leaves: rank 1's part with idx 1 and 3, and half of idx 5
    part = part_path(out, 1, 2)
    part.write_text(lines[0] + lines[2] + lines[4] + lines[6][:10])
    Path(str(part) + ".json").write_text((tmp_path / "ref.tsv.json").read_text())

    certify_dataset(smoothed, data, out, **kw)
    got = out.read_text().splitlines(keepends=True)
    assert find_parts(out) == []
    # the part's rows first (merged into --out before the run), then the missing ones, as in any resume
    assert [g.split("\t")[0] for g in got[1:]] == ["1", "3", "0", "2", "4", "5"]
    assert got[1] == lines[2] and got[2] == lines[4]  # kept as they were, not recomputed
    by_idx = sorted(got[1:], key=lambda g: int(g.split("\t")[0]))
    assert [_stable(g) for g in by_idx] == [_stable(r) for r in lines[1:]]  # the rest: the same rows


# ----------------------------------------------------------------- real processes (torchrun)


def _stable(line: str, header: list[str] = list(COLUMNS)) -> list[str]:
    """A row without its timing columns (the only ones that differ between equal runs)."""
    fields = line.rstrip("\n").split("\t")
    return [f for c, f in zip(header, fields) if c != "time" and "seconds" not in c]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def _launch(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # "-m --": torchrun would otherwise read --n, --max, --start as abbreviations of its own options.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    # A hang would be a bug: fail instead of waiting for the ranks' own timeout.
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    assert main(["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--batch", "64",
                 "--lr", "0.05", "--epochs", "1", "--limit", "256", "--quiet", "--device", "cpu",
                 "--out", str(path)]) == 0
    return path


def _certify_args(ckpt: Path, out: Path) -> list[str]:
    return ["certify", "--checkpoint", str(ckpt), "--max", "6", "--n0", "10", "--n", "64", "--alpha", "0.01",
            "--batch", "50", "--device", "cpu", "--quiet", "--out", str(out)]


def test_sharded_certify_equals_one_process_and_resumes(checkpoint, tmp_path):
    single, sharded = tmp_path / "single.tsv", tmp_path / "sharded.tsv"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes
    try:
        assert main(_certify_args(checkpoint, single)) == 0
    finally:
        torch.set_num_threads(threads)
    ref = single.read_text().splitlines(keepends=True)
    header = ref[0].rstrip("\n").split("\t")

    run = _launch(2, "-m", "--", "smoothcert", *_certify_args(checkpoint, sharded), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = sharded.read_text().splitlines(keepends=True)
    assert got[0] == ref[0] and len(got) == 7
    assert [_stable(g, header) for g in got] == [_stable(r, header) for r in ref]
    assert json.loads(Path(f"{sharded}.json").read_text()) == json.loads(Path(f"{single}.json").read_text())
    assert find_parts(sharded) == []
    assert main(_certify_args(checkpoint, sharded)) == 0  # a single process finds nothing left to do
    assert sharded.read_text().splitlines(keepends=True) == got

    # An interrupted 3-process run: idx 0 merged, rank 2's part holds idx 2, 5 and half of idx 3.
    # Relaunched with 2 processes, it keeps those rows and computes only 1, 3, 4.
    resumed = tmp_path / "resumed.tsv"
    resumed.write_text(ref[0] + ref[1])
    part = part_path(resumed, 2, 3)
    part.write_text(ref[0] + ref[3] + ref[6] + ref[4][:12])
    for f in (Path(f"{resumed}.json"), Path(f"{part}.json")):
        f.write_text(Path(f"{single}.json").read_text())
    run = _launch(2, "-m", "--", "smoothcert", *_certify_args(checkpoint, resumed), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = resumed.read_text().splitlines(keepends=True)
    assert [g.split("\t")[0] for g in got[1:]] == ["0", "1", "2", "3", "4", "5"]
    assert got[1] == ref[1] and got[3] == ref[3] and got[6] == ref[6]  # kept verbatim
    assert [_stable(g, header) for g in got] == [_stable(r, header) for r in ref]
    assert find_parts(resumed) == []


def test_a_sharded_packed_run_gives_each_pack_to_one_rank_and_equals_one_process(checkpoint, tmp_path):
    # 7 inputs in packs of 3: [0 1 2] [3 4 5] [6], each certified with the stream of its first input
    # (how the packs are dealt out is checked above; this is the end-to-end row equality).
    args = lambda out: [*_certify_args(checkpoint, out)[:-2], "--max", "7", "--pack", "3", "--out", str(out)]  # noqa: E731
    single, sharded = tmp_path / "single.tsv", tmp_path / "sharded.tsv"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args(single)) == 0
    finally:
        torch.set_num_threads(threads)
    ref = single.read_text().splitlines(keepends=True)
    header = ref[0].rstrip("\n").split("\t")
    assert len(ref) == 8
    run = _launch(2, "-m", "--", "smoothcert", *args(sharded), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = sharded.read_text().splitlines(keepends=True)
    assert [_stable(g, header) for g in got] == [_stable(r, header) for r in ref]


FAILING = """
    import sys
    import torch
    from smoothcert import SmoothedClassifier, get_noise
    from smoothcert.distributed import process_group
    from smoothcert.runs.certify import certify_dataset

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            if i == 3:
                raise ValueError("input 3 is broken")
            return torch.full((4,), i / 8), i % 2

    torch.manual_seed(0)
    smoothed = SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    with process_group(device="cpu") as shard:
        assert shard is not None and shard.world_size == 2
        certify_dataset(smoothed, Data(), sys.argv[1], n0=10, n=50, alpha=0.01, batch_size=25, progress=False,
                        shard=shard)
"""


def test_a_failing_rank_neither_hangs_the_others_nor_loses_their_rows(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILING))
    out = tmp_path / "run.tsv"
    run = _launch(2, str(script), str(out), cwd=tmp_path)
    assert run.returncode != 0
    assert "rank 1 failed (ValueError: input 3 is broken)" in run.stderr
    _, rows = _table(out)
    # rank 0 did 0, 2, 4, 6; rank 1 did 1, then failed on 3
    assert [int(r[0]) for r in rows] == [0, 1, 2, 4, 6]
    assert find_parts(out) == []
