"""``smoothcert sr train|attack|certify`` end to end on tiny images; resume; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from smoothcert.cli import main
from smoothcert.results import read_table

pytest.importorskip("skimage")  # SSIM


@pytest.fixture()
def folder(tmp_path):
    from PIL import Image
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((13, 15, 3)) * 255).astype("uint8")).save(d / f"im{i}.png")
    return d


def test_sr_commands(tmp_path, folder, capsys):
    ckpt = tmp_path / "u.pt"
    assert main(["sr", "train", "--out", str(ckpt), "--folders", str(folder), "--method", "noise", "--sigma-f", "0.1",
                 "--steps", "2", "--batch", "2", "--crop", "8", "--save-every", "1", "--quiet"]) == 0
    common = ["--folder", str(folder), "--crop", "9", "--checkpoint", str(ckpt)]
    out = tmp_path / "a.tsv"
    assert main(["sr", "attack", *common, "--out", str(out), "--eps-rel", "0", "0.05", "--steps", "1"]) == 0
    t = read_table(out)
    assert len(t) == 2 and t.values["psnr@0.05"][0] <= t.values["psnr@0.0"][0] + 1e-9
    assert max(t.values["l2@0.05"]) <= 0.05 * (3 * 81) ** 0.5 + 1e-6
    assert main(["sr", "attack", *common, "--out", str(out), "--eps-rel", "0", "0.05", "--steps", "1"]) == 0
    assert len(read_table(out)) == 2  # resumed: nothing redone, nothing repeated
    sm = tmp_path / "s.tsv"
    assert main(["sr", "attack", *common, "--out", str(sm), "--eps-rel", "0.05", "--steps", "1", "--sigma-g", "0.1",
                 "--n", "2", "--samples", "2"]) == 0
    assert read_table(sm).values["attack"] == ["eot", "eot"]
    cert = tmp_path / "c.tsv"
    assert main(["sr", "certify", *common, "--out", str(cert), "--sigma", "0.1", "--eps", "0", "0.05", "--n0", "6",
                 "--n", "40", "--delta", "0.3"]) == 0
    c = read_table(cert)
    assert len(c) == 2 and all(r > 0 for r in c.values["center_radius@0.0"])
    # Bad input: a crop larger than the images is one error line, exit status 2.
    capsys.readouterr()
    assert main(["sr", "attack", "--folder", str(folder), "--crop", "99", "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "b.tsv")]) == 2
    assert "larger than the image" in capsys.readouterr().err
    assert main(["sr", "certify", *common, "--out", str(tmp_path / "d.tsv"), "--sigma", "0.1", "--eps", "-1"]) == 2
