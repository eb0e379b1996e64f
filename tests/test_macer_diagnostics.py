"""benchmarks/macer_terms.py: the diagnosis of a checkpoint is consistent with macer_terms itself."""

import pytest
import torch
from repo_scripts import load_script
from torch import nn

from smoothcert.train import macer_terms


def _load():
    return load_script("benchmarks/macer_terms.py")


def test_diagnose_partitions_the_batch_and_matches_the_loss_terms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.mul_(20)  # at beta 16 each case of the hinge occurs (checked below)
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    out = _load().diagnose(model, x, y, sigma=0.5, m=8, beta=16.0, gamma=8.0, lbd=4.0, seed=3)
    parts = ("frac_wrong", "frac_saturated", "frac_beyond_gamma", "frac_active")
    assert all(out[k] > 0 for k in parts)
    assert sum(out[k] for k in parts) == pytest.approx(1.0, abs=4e-4)  # each rounded to 4 digits
    # The same draws as the loss itself would use: the reported terms are macer_terms' on them.
    deltas = torch.randn((8, *x.shape), generator=torch.Generator().manual_seed(3)) * 0.5
    terms = macer_terms(model((x + deltas).flatten(0, 1)).view(8, 64, -1), y, sigma=0.5, beta=16.0, gamma=8.0)
    assert out["classification"] == pytest.approx(terms.classification.item(), abs=1e-4)
    assert out["lbd_robustness"] == pytest.approx(4.0 * terms.robustness.item(), abs=1e-4)
    assert out["grad_norm_classification"] > 0 and -1.0 <= out["grad_cosine"] <= 1.0
    assert (out["grad_norm_lbd_robustness"] > 0) == (out["frac_active"] > 0)
