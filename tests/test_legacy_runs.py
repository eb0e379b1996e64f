"""Result files written by smoothcert 0.1.0 (tests/data/legacy, see its README) resume under the
current code: re-running the command that wrote a file, on a copy with its last rows removed, keeps
the remaining rows verbatim, appends exactly the missing ones with the same values (timing columns
aside) and leaves the sidecar configuration as it was (same keys, same values)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from smoothcert.cli import main
from smoothcert.engine import sampling

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
TIMING = ("time", "seconds")


def _commands() -> dict[str, list[str]]:
    """The README's result-writing commands, by output file name."""
    commands = {}
    for line in (LEGACY / "README.md").read_text().splitlines():
        if line.startswith("smoothcert ") and line.split()[1] in ("certify", "predict", "attack"):
            argv = shlex.split(line)[1:]
            commands[argv[argv.index("--out") + 1]] = argv
    return commands


COMMANDS = _commands()


def _without_timing(lines: list[str]) -> list[list[str]]:
    header = lines[0].split("\t")
    keep = [i for i, name in enumerate(header) if name not in TIMING]
    return [[fields[i] for i in keep] for fields in (line.split("\t") for line in lines)]


def test_the_readme_lists_every_legacy_result_file():
    assert sorted(COMMANDS) == sorted(p.name for p in LEGACY.glob("*.tsv"))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_legacy_file_resumes_to_the_same_rows_and_sidecar(name, tmp_path, monkeypatch):
    for f in LEGACY.iterdir():
        if f.suffix == ".pt" or f.name in (name, name + ".json"):
            shutil.copy(f, tmp_path / f.name)
    original = (LEGACY / name).read_text().splitlines()
    sidecar = json.loads((LEGACY / (name + ".json")).read_text())
    argv = [*COMMANDS[name], "--device", "cpu"]
    monkeypatch.chdir(tmp_path)  # the README's commands use relative paths
    # smoothcert 0.1.0 drew the noise in float32 (issue #16 made float64 the default, and an absent
    # noise_dtype in a sidecar means the default): re-draw the missing rows the old way to compare.
    monkeypatch.setattr(sampling, "noise_work_dtype", lambda noise_dtype, model_dtype: model_dtype)
    # Complete: the configuration is accepted and nothing is added.
    assert main(argv) == 0
    assert (tmp_path / name).read_text().splitlines() == original
    assert json.loads((tmp_path / (name + ".json")).read_text()) == sidecar
    # Cut: the inputs of one attack batch (all three here) are attacked together, and a row depends
    # on its batch (float rounding of batched gradients), so attack files lose all their rows; the
    # others keep the first half of theirs.
    assert len(original) >= 3
    cut = 1 if argv[0] == "attack" else len(original) - (len(original) - 1) // 2
    (tmp_path / name).write_text("\n".join(original[:cut]) + "\n")
    assert main(argv) == 0
    resumed = (tmp_path / name).read_text().splitlines()
    assert resumed[:cut] == original[:cut]  # kept verbatim
    assert _without_timing(resumed) == _without_timing(original)
    assert json.loads((tmp_path / (name + ".json")).read_text()) == sidecar
