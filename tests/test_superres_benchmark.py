"""benchmarks/superres.py end to end at a tiny size: rows, tables, pictures, and a resumed second run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from repo_scripts import load_script

pytest.importorskip("skimage")  # SSIM
pytest.importorskip("matplotlib")


@pytest.fixture()
def data_root(tmp_path):
    """A stand-in for ../shared/data: photos/ (two of them the validation photos) and samples/."""
    from PIL import Image
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    (root / "samples").mkdir()
    for name in ("a.jpg", "b.jpg", "wood.jpg", "yellowflower.jpg"):
        Image.fromarray((rng.random((30, 34, 3)) * 255).astype("uint8")).save(root / "photos" / name)
    for i in range(3):
        Image.fromarray((rng.random((20, 22, 3)) * 255).astype("uint8")).save(root / "samples" / f"imagenet_0{i}_1.jpg")
    Image.fromarray((rng.random((20, 22, 3)) * 255).astype("uint8")).save(root / "samples" / "cifar10_00_1.png")
    return root


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_tiny_benchmark_writes_tables_pictures_and_resumes(tmp_path, data_root, capsys):
    bench = load_script("benchmarks/superres.py")
    work = tmp_path / "work"
    args = ["--data-root", str(data_root), "--workdir", str(work), "--no-skimage", "--train-crop", "16",
            "--test-crop", "16", "--steps", "4", "--ft-steps", "2", "--batch", "2", "--save-every", "2",
            "--sigmas-f", "0.25", "--cert-sigma", "0.25", "--grid-sigma-f", "0.25", "--adv-eps-rel", "0.05",
            "--train-pgd-steps", "1", "--pgd-steps", "1",
            "--eot-samples", "1", "--val-crops", "2", "--n-val", "2", "--n-eval", "2", "--cert-images", "2",
            "--cert-n0", "4", "--cert-n", "30", "--cert-eps", "0", "0.1", "--grid-image", "1", "--grid-eps-rel",
            "0.05"]
    # The pilot: the standard model's first 2 of its 4 steps, clean PSNR beside bilinear's.
    pilot = bench.main([*args, "--pilot-steps", "2"])
    assert (pilot["step"], pilot["of"]) == (2, 4) and pilot["bilinear"]["psnr"] > 0 and pilot["std"]["psnr"] > 0
    assert not (work / "results.json").exists() and sorted(p.name for p in work.glob("*.pt")) == ["std.pt"]
    capsys.readouterr()
    data = bench.main(args)
    lines = _lines(capsys)
    assert lines[0]["kind"] == "data" and lines[0]["test_images"] == 3  # the imagenet_* files only
    models = ["bilinear", "std", "noise0.25", "adv0.05"]
    assert sorted(data) == sorted([f"eval/{m}/{b:g}" for m in models for b in bench.BUDGETS]
                                  + ["cert/noise0.25/0", "cert/noise0.25/0.1", "settings"])
    assert data["settings"]["train_crop"] == 16 and "workdir" not in data["settings"]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert len(evals) == len(models) * len(bench.BUDGETS)
    for r in evals:
        assert 0 <= r["base"]["mse"] <= 1 and r["base"]["psnr"] == pytest.approx(-10 * np.log10(r["base"]["mse"]),
                                                                                  rel=0.2)
    noisy = [r for r in evals if r["model"] == "noise0.25"]
    for r in noisy:  # sigma_g picked on the validation crops from the default factors, 0 included
        assert list(r["val_mse_by_factor"]) == ["0", "0.25", "0.5", "0.75", "1", "1.5"]
        assert r["sigma_g"] == pytest.approx(0.25 * r["sigma_g_factor"])
        assert r["val_mse_by_factor"][f"{r['sigma_g_factor']:g}"] == min(r["val_mse_by_factor"].values())
    # Clean inputs: the bilinear row is the input itself, not attacked.
    clean = data["eval/bilinear/0"]["base"]
    assert data["eval/bilinear/0.2"]["base"]["mse"] > clean["mse"]
    for eps in (0, 0.1):
        c = data[f"cert/noise0.25/{eps:g}"]
        assert c["images"] == 2 and c["n"] == 30
    assert data["cert/noise0.25/0.1"]["center_violations"] == 0
    assert data["cert/noise0.25/0.1"]["median_outside_coords"] == 0

    tables = (work / "tables.md").read_text()
    assert tables.count("**Certified**") == 1
    rows = [line for line in tables.split("**Certified**")[0].splitlines() if line.startswith("| ")]
    heads = [r for r in rows if r.startswith("| model")]
    assert len(heads) == 2 and "ε_rel=0 MSE" in heads[0] and "ε_rel=0.2 MSE" in heads[1]
    body = [r for r in rows if not r.startswith("| model")]
    labels = [r.split(" | ")[0][2:] for r in body]
    assert labels == 2 * ["bilinear input (no model)", "standard", "smoothed σ_f=0.25", "adv. tr. ε_rel=0.05"]
    assert all(r.count("|") == 2 + 3 * 3 + 1 for r in body)  # model, σ_g, 3 budgets × MSE/PSNR/SSIM
    assert f"| bilinear input (no model) | – | {clean['mse']:.4f} | {clean['psnr']:.2f} |" in tables
    cert = [line for line in tables.splitlines() if line.startswith(("| 0 |", "| 0.1 |"))]
    assert len(cert) == 2 and cert[1].endswith("| 0 / 2 |")  # no center-smoothing violation on either image
    for png in ("grid.png", "certified.png"):
        assert (work / png).stat().st_size > 5000
    ckpts = {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")}
    assert sorted(ckpts) == ["adv0.05.pt", "noise0.25.pt", "std.pt"]

    # A second run trains and evaluates nothing: checkpoints untouched, no eval or certified line.
    assert bench.main(args) == data
    again = _lines(capsys)
    assert not [r for r in again if r["kind"] in ("eval", "certified")]
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt")} == ckpts
    # A lost cell (an interrupted run) is recomputed alone, with the same (seeded) result.
    stored = json.loads((work / "results.json").read_text())
    lost = stored.pop("eval/std/0.05")
    (work / "results.json").write_text(json.dumps(stored))
    assert bench.main(args)["eval/std/0.05"]["base"] == lost["base"]
    redone = [r for r in _lines(capsys) if r["kind"] == "eval"]
    assert [(r["model"], r["eps_rel"]) for r in redone] == [("std", 0.05)]
    # Other settings in the same workdir: refused, not mixed into the tables.
    with pytest.raises(SystemExit, match="pgd_steps"):
        bench.main([*args, "--pgd-steps", "2"])

    # Added adversarial budgets and sigma_g factors are accepted (removing one is not): only the new
    # model is trained, and every cell equals what a fresh run with the extended settings writes.
    with pytest.raises(SystemExit, match="adv_eps_rel"):
        bench.main([*args, "--adv-eps-rel", "0.1"])  # (argparse: the last --adv-eps-rel counts)
    more = [*args, "--adv-eps-rel", "0.05", "0.1", "--sigma-g-factors", "0", "0.25", "0.5", "0.75", "1", "1.5", "3", "8"]
    # One cell as if computed with a grid lacking its winner: the extension must recompute it in full.
    stored = json.loads((work / "results.json").read_text())
    cell = stored["eval/noise0.25/0.05"]
    del cell["val_mse_by_factor"][f"{cell['sigma_g_factor']:g}"]
    cell["sigma_g_factor"] = float(min(cell["val_mse_by_factor"], key=cell["val_mse_by_factor"].get))
    cell["sigma_g"] = 0.25 * cell["sigma_g_factor"]
    (work / "results.json").write_text(json.dumps(stored))
    extended = bench.main(more)
    out = _lines(capsys)
    assert [r["model"] for r in out if r["kind"] == "train" and r["seconds_this_run"] > 0.5] in (["adv0.1"], [])
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.pt") if p.name in ckpts} == ckpts
    kept = {r["eps_rel"] for r in out if r["kind"] == "eval_kept"}
    assert kept == set(bench.BUDGETS) - {0.05}  # the new factors 3 and 8 do not win here: cells kept
    redone = {(r["model"], r["eps_rel"]) for r in out if r["kind"] == "eval"}
    assert redone == {("noise0.25", 0.05)} | {("adv0.1", b) for b in bench.BUDGETS}
    assert extended["settings"]["sigma_g_factors"][-2:] == [3.0, 8.0]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for p in work.glob("*.pt"):  # the same models (training is deterministic and resumes exactly)
        (fresh / p.name).write_bytes(p.read_bytes())
    again = bench.main([*more[:3], str(fresh), *more[4:]])
    strip = {k: {**v, "seconds": None} for k, v in extended.items() if k.startswith("eval/")}
    assert strip == {k: {**v, "seconds": None} for k, v in again.items() if k.startswith("eval/")}
    assert bench.main(more) == extended  # and a third run changes nothing
