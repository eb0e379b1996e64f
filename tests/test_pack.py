"""Packing at the dataset level: ``certify_dataset``/``predict_dataset`` with ``pack = K`` certify K
inputs per engine call. Checked: counts stay per input, rows are reproducible and independent of
interruptions (a partly written pack is recomputed whole and only its missing rows written), pack=1
is the per-input path, and bad values are refused."""

from __future__ import annotations

import pytest
import torch
from linear import LinearBinary
from scipy.stats import norm
from torch.utils.data import TensorDataset

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.cli import main
from smoothcert.runs.certify import certify_dataset, check_pack, predict_dataset
from smoothcert.rng import input_seed


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def _stable(line: str, header: list[str]) -> list[str]:
    """A row without its timing columns (the only ones that differ between equal runs)."""
    return [f for c, f in zip(header, line.split("\t")) if c != "time" and "seconds" not in c]


def _setup(count: int = 7, sigma: float = 0.5):
    """Inputs alternating between the two sides of w.x = 0 at different distances, so classes and
    radii differ within every pack."""
    torch.manual_seed(0)
    w = torch.randn(64)
    w /= w.norm()
    margins = torch.tensor([0.8, -0.3, 0.05, -1.0, 0.4, -0.6, 0.2, -0.1, 0.9][:count])
    x = 0.5 + margins[:, None] * w[None, :]
    model = LinearBinary(w, b=-float(0.5 * w.sum()))
    data = TensorDataset(x, model.label(x))
    return SmoothedClassifier(model, noise=get_noise("gaussian", sigma=sigma), num_classes=2), data, model, x


def test_packed_rows_keep_each_inputs_own_class_and_counts(tmp_path):
    # sigma tiny against every margin: each input's draws all give its own class, so any count that
    # crossed into another input of the pack would show as count_a < n or a wrong prediction.
    smoothed, data, model, x = _setup(sigma=0.001)
    out = tmp_path / "c.tsv"
    certify_dataset(smoothed, data, out, n0=20, n=200, alpha=0.001, batch_size=64, pack=4, progress=False)
    header, *rows = [line.split("\t") for line in _lines(out)]
    col = {c: header.index(c) for c in ("idx", "label", "predict", "count_a", "n", "radius")}
    assert [int(r[col["idx"]]) for r in rows] == list(range(7))
    for r in rows:
        assert int(r[col["predict"]]) == int(r[col["label"]])
        assert int(r[col["count_a"]]) == int(r[col["n"]]) == 200
    # the largest radius 200 unanimous draws allow: sigma * Phi^-1(alpha^(1/n)) (Clopper-Pearson at k = n)
    radii = {float(r[col["radius"]]) for r in rows}
    assert len(radii) == 1 and radii.pop() == pytest.approx(0.001 * norm.ppf(0.001 ** (1 / 200)), rel=1e-9)


def test_pack_one_is_the_per_input_path(tmp_path):
    smoothed, data, _, x = _setup()
    out = tmp_path / "c.tsv"
    certify_dataset(smoothed, data, out, n0=20, n=300, alpha=0.01, batch_size=64, seed=3, pack=1, progress=False)
    header, *rows = [line.split("\t") for line in _lines(out)]
    for i, row in enumerate(rows):
        cert = smoothed.certify(x[i], n0=20, n=300, alpha=0.01, batch_size=64, generator=input_seed(3, i))
        assert int(row[header.index("count_a")]) == int(cert.count_a[0])
        assert float(row[header.index("radius")]) == pytest.approx(float(cert.radius[0]), abs=1e-12)


@pytest.mark.parametrize("what", ["certify", "predict"])
def test_packed_runs_resume_to_the_rows_of_an_uninterrupted_run(tmp_path, what):
    smoothed, data, _, _ = _setup()

    def run(out, indices=None):
        if what == "certify":
            certify_dataset(smoothed, data, out, n0=20, n=300, alpha=0.01, batch_size=64, pack=3,
                            indices=indices, progress=False)
        else:
            predict_dataset(smoothed, data, out, n=300, alpha=0.01, batch_size=64, pack=3, indices=indices,
                            progress=False)

    full = tmp_path / "full.tsv"
    run(full)
    ref = _lines(full)
    header = ref[0].split("\t")
    # Interrupted after rows 0, 1 (pack [0, 1, 2] half written) and 4 (pack [3, 4, 5] partly):
    # the resumed run recomputes those packs with their own streams and writes only 2, 3, 5, 6.
    part = tmp_path / "part.tsv"
    part.write_text("\n".join(ref[:3] + [ref[5]]) + "\n")
    (tmp_path / "part.tsv.json").write_text((tmp_path / "full.tsv.json").read_text())
    run(part)
    got = _lines(part)
    assert got[:4] == ref[:3] + [ref[5]]  # kept verbatim
    assert len(got) == len(ref)
    assert sorted(_stable(line, header) for line in got[1:]) == sorted(_stable(line, header) for line in ref[1:])


def test_packing_changes_draws_not_the_guarantee(tmp_path):
    # Same inputs, pack 1 vs pack 7: counts are different draws of the same binomials
    # (pA = Phi(|margin| / sigma), from 0.66 to 0.98 here; input 2, at pA 0.54, is left out because
    # its n0 draws may select either class); two-proportion z-test at |z| <= 4 per input.
    smoothed, data, _, _ = _setup()
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    for out, pack in ((a, 1), (b, 6)):
        certify_dataset(smoothed, data, out, n0=50, n=4000, alpha=0.01, batch_size=500, pack=pack,
                        indices=[0, 1, 3, 4, 5, 6], progress=False)
    header = _lines(a)[0].split("\t")
    ia, ib = [[line.split("\t") for line in _lines(p)[1:]] for p in (a, b)]
    for ra, rb in zip(ia, ib):
        assert ra[0] == rb[0]
        pa = int(ra[header.index("count_a")]) / 4000
        pb = int(rb[header.index("count_a")]) / 4000
        pooled = (pa + pb) / 2
        se = (2 * pooled * (1 - pooled) / 4000) ** 0.5
        assert abs(pa - pb) <= 4 * se + 1e-12


def test_bad_pack_values_are_refused(tmp_path, capsys):
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="pack"):
            check_pack(bad)
    smoothed, data, _, _ = _setup()
    with pytest.raises(ValueError, match="pack"):
        certify_dataset(smoothed, data, tmp_path / "x.tsv", n0=10, n=50, alpha=0.01, batch_size=16, pack=0)
    assert not (tmp_path / "x.tsv").exists()
    with pytest.raises(SystemExit):
        main(["certify", "--checkpoint", "none.pt", "--pack", "0", "--out", str(tmp_path / "y.tsv")])
    assert "--pack" in capsys.readouterr().err
