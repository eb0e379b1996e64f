"""Dataset runs of the soft certificates and of the one-pass heuristic: rows, resume, analysis,
the heuristic kept out of certified-accuracy readers, bad input writing nothing."""

import pytest
import torch

from linear import LinearBinary
from smoothcert.analysis import certified_accuracy, load_results
from smoothcert.errors import ConfigMismatchError, InputError, ResultFileError
from smoothcert.noise import get_noise
from smoothcert.results import DETERMINISTIC, SOFT_CERTIFY, read_table
from smoothcert.runs.soft import certify_clean_class_dataset, certify_soft_dataset, deterministic_dataset


def _data(count=6):
    g = torch.Generator().manual_seed(0)
    xs = 0.2 + 0.6 * torch.rand(count, 2, generator=g)
    lin = LinearBinary(torch.tensor([0.6, -0.8]), 0.05)
    return lin, [(x, int(lin.label(x[None])[0])) for x in xs]


def test_soft_rows_resume_and_analyse(tmp_path):
    lin, data = _data()
    out = tmp_path / "soft.tsv"
    kw = dict(noise=get_noise("gaussian", sigma=0.5), num_classes=2, certificate="soft-phi", n0=10, n=500,
              alpha=0.01, batch_size=256, seed=3, progress=False)
    certify_soft_dataset(lin, data, out, indices=[0, 1, 2], **kw)
    first = read_table(out)
    assert first.columns[:6] == ("idx", "label", "predict", "radius", "correct", "time")
    assert first.columns == SOFT_CERTIFY.columns
    # Resume over a larger selection: the first rows are kept, the new ones equal a fresh run's.
    certify_soft_dataset(lin, data, out, indices=range(6), **kw)
    both = read_table(out)
    assert both.idx == [0, 1, 2, 3, 4, 5]
    fresh = tmp_path / "fresh.tsv"
    certify_soft_dataset(lin, data, fresh, indices=range(6), **kw)
    assert read_table(fresh).values["radius"] == both.values["radius"]
    res = load_results(out)
    assert len(res) == 6 and certified_accuracy(res, [0.0])[0] > 0
    # Another certificate into the same file is refused, and the file is left as it was.
    with pytest.raises(ConfigMismatchError):
        certify_soft_dataset(lin, data, out, indices=range(6), **{**kw, "certificate": "soft-lbound"})
    assert read_table(out).values["radius"] == both.values["radius"]


def test_heuristic_rows_are_not_certified_rows(tmp_path):
    lin, data = _data()
    out = tmp_path / "det.tsv"
    deterministic_dataset(lin, data, out, sigma=0.5, num_classes=2, progress=False)
    table = read_table(out)
    assert table.columns == DETERMINISTIC.columns and "radius" not in table.columns
    assert all(r >= 0 for r in table.values["heuristic_radius"])
    with pytest.raises(ResultFileError, match="radius"):
        load_results(out)


def test_clean_class_rows_are_certify_rows(tmp_path):
    lin, data = _data()
    out = tmp_path / "clean.tsv"
    certify_clean_class_dataset(lin, data, out, noise=get_noise("gaussian", sigma=0.5), num_classes=2, n=500,
                                alpha=0.01, batch_size=256, progress=False)
    res = load_results(out)
    d = lin.true_radius(torch.stack([x for x, _ in data]), "l2").numpy()
    assert len(res) == 6 and set(res.extra["n0"]) == {0}
    assert all(r <= di for r, di in zip(res.radius, d))  # below the exact distance (prob. >= 1 - 6 alpha)


def test_bad_input_writes_nothing(tmp_path):
    lin, data = _data()
    out = tmp_path / "bad.tsv"
    noise = get_noise("gaussian", sigma=0.5)
    with pytest.raises(InputError, match="n0"):
        certify_soft_dataset(lin, data, out, noise=noise, num_classes=2, certificate="soft-phi", n0=500, n=500,
                             alpha=0.01, batch_size=64, progress=False)
    with pytest.raises(InputError, match="num_classes=3"):
        certify_soft_dataset(lin, data, out, noise=noise, num_classes=3, certificate="soft-phi", n0=10, n=500,
                             alpha=0.01, batch_size=64, progress=False)
    with pytest.raises(InputError, match="certificate"):
        certify_soft_dataset(lin, data, out, noise=noise, num_classes=2, certificate="hard", n0=10, n=500,
                             alpha=0.01, batch_size=64, progress=False)
    with pytest.raises(InputError, match="sigma"):
        deterministic_dataset(lin, data, out, sigma=-0.5, num_classes=2, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
