"""``smoothcert sr evaluate`` on tiny images (exact rows, resume, bad input) and
:func:`smoothcert.regression.select_sigma_g` (the validation choice of sigma_g)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothcert.cli import main
from smoothcert.regression import select_sigma_g
from smoothcert.results import read_table

pytest.importorskip("skimage")  # SSIM


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from PIL import Image
    tmp_path = tmp_path_factory.mktemp("sr_evaluate")
    rng = np.random.default_rng(1)
    out = []
    for sub, count in (("test", 2), ("val", 2)):
        d = tmp_path / sub
        d.mkdir()
        for i in range(count):
            Image.fromarray((rng.random((12, 14, 3)) * 255).astype("uint8")).save(d / f"im{i}.png")
        out.append(d)
    return out


@pytest.fixture(scope="module")
def checkpoint(folders):
    ckpt = folders[0].parent / "u.pt"
    assert main(["sr", "train", "--out", str(ckpt), "--folders", str(folders[0]), "--steps", "1", "--batch", "2",
                 "--crop", "8", "--save-every", "1", "--quiet"]) == 0
    return ckpt


def _bilinear_psnr_by_hand(path, crop: int) -> float:
    """PSNR of the bilinear ×2 input against the centre crop, from numpy: 10·log10(1 / mean (y − x)²)."""
    from PIL import Image

    from smoothcert.data.superres import degrade
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    h, w = img.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = img[top:top + crop, left:left + crop].transpose(2, 0, 1)
    y = degrade(torch.tensor(x[None], dtype=torch.float32))[0].double().numpy()
    return 10 * math.log10(1 / np.mean((y - x.astype(np.float32).astype(np.float64)) ** 2))


def test_sr_evaluate_rows_table_resume(tmp_path, folders, checkpoint, capsys):
    test, val = folders
    out = tmp_path / "e.tsv"
    cmd = ["sr", "evaluate", "--folder", str(test), "--crop", "10", "--checkpoint", str(checkpoint), "--out", str(out),
           "--sigma-g", "0", "0.2", "--n", "3", "--val-dir", str(val)]
    capsys.readouterr()
    assert main(cmd) == 0
    printed = capsys.readouterr().out
    t = read_table(out)
    assert len(t) == 2 and t.values["image"] == ["im0.png", "im1.png"]
    for m in ("mse", "psnr", "ssim"):  # sigma_g = 0 is the base model itself, exactly
        assert t.values[f"{m}@0.0"] == t.values[f"{m}@base"]
    assert t.values["mse@0.2"] != t.values["mse@base"]
    for i in range(2):
        assert t.values["psnr@bilinear"][i] == pytest.approx(_bilinear_psnr_by_hand(test / f"im{i}.png", 10),
                                                             abs=1e-5)
    assert t.values["sigma_g_chosen"][0] in (0.0, 0.2) and len(set(t.values["sigma_g_chosen"])) == 1
    assert "| bilinear |" in printed and "(chosen on validation)" in printed
    mean_psnr = sum(t.values["psnr@bilinear"]) / 2
    assert f"| bilinear | {sum(t.values['mse@bilinear']) / 2:.5f} | {mean_psnr:.2f} |" in printed
    # Resume: a lost row is recomputed alone, equal to the first run's; nothing repeated.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))
    assert main(cmd) == 0
    again = read_table(out)
    assert len(again) == 2
    assert {k: v for k, v in again.values.items() if k != "seconds"} == \
        {k: v for k, v in t.values.items() if k != "seconds"}
    # Without validation images: every level's row, no choice.
    plain = tmp_path / "p.tsv"
    assert main([*cmd[:-2], "--out", str(plain)]) == 0
    assert math.isnan(read_table(plain).values["sigma_g_chosen"][0])


def test_rows_are_named_after_the_images_they_hold(tmp_path, folders, checkpoint):
    # A non-image file sorted before the images (README.md < im0.png) once shifted every row's name
    # by one: the names came from a plain glob, the images from the image-suffix filter.
    import shutil
    mixed = tmp_path / "mixed"
    shutil.copytree(folders[0], mixed)
    (mixed / "README.md").write_text("not an image")
    out = tmp_path / "m.tsv"
    assert main(["sr", "evaluate", "--folder", str(mixed), "--crop", "10", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--sigma-g", "0", "--n", "2"]) == 0
    assert read_table(out).values["image"] == ["im0.png", "im1.png"]


def test_sr_evaluate_bad_input(tmp_path, folders, checkpoint, capsys):
    test, val = folders
    base = ["sr", "evaluate", "--folder", str(test), "--crop", "10", "--checkpoint", str(checkpoint)]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "a.tsv"), "--val-dir", str(val)]) == 2
    assert "needs sigma_g candidates" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.tsv"), "--sigma-g", "-0.1"]) == 2
    assert "sigma_g" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c.tsv"), "--sigma-g", "0.1", "0.1"]) == 2
    assert "repeat" in capsys.readouterr().err
    assert main([*base[:5], "99", *base[6:], "--out", str(tmp_path / "d.tsv")]) == 2
    assert "larger than the image" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "f.tsv"), "--sigma-g", "0.1", "--val-dir", str(tmp_path / "no")]) == 2
    assert "no image folder" in capsys.readouterr().err
    # The same file with other settings: refused, not mixed.
    out = tmp_path / "e.tsv"
    assert main([*base, "--out", str(out), "--sigma-g", "0.1", "--n", "2"]) == 0
    assert main([*base, "--out", str(out), "--sigma-g", "0.1", "--n", "3"]) == 2


class _Counting(torch.nn.Module):
    """f(y) = 2y, counting the rows it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, y):
        self.rows += y.shape[0]
        return 2 * y


def test_select_sigma_g_scores_and_reuse():
    y = torch.full((2, 3, 4, 4), 0.25)
    x = torch.full((2, 3, 4, 4), 0.5)
    f = _Counting().eval()
    # f(y) = x exactly, so sigma_g = 0 scores 0 and wins; noise only adds error: 4·sigma²-ish.
    best, scores = select_sigma_g(f, y, x, sigma_gs=[0.3, 0.0, 0.1], n=4, generator=0)
    assert best == 0.0 and scores[0.0] == 0.0 and list(scores) == [0.3, 0.0, 0.1]
    assert scores[0.3] > scores[0.1] > 0
    # Known scores are reused: only the new candidate is sampled, and the old scores stand.
    f.rows = 0
    best2, scores2 = select_sigma_g(f, y, x, sigma_gs=[0.3, 0.0, 0.1, 0.05], n=4, generator=0, scores=scores)
    assert f.rows == 2 * 4 + 1  # 4 draws per image of the one new candidate, one probe row of the output shape
    assert best2 == 0.0 and {k: scores2[k] for k in scores} == scores
    fresh = select_sigma_g(f, y, x, sigma_gs=[0.05], n=4, generator=0)[1]
    assert fresh[0.05] == scores2[0.05]  # each candidate seeded alone
    with pytest.raises(Exception, match="sigma_g"):
        select_sigma_g(f, y, x, sigma_gs=[], n=4, generator=0)
    with pytest.raises(Exception, match="sigma_g"):
        select_sigma_g(f, y, x, sigma_gs=[-1.0], n=4, generator=0)
