"""What several benchmark scripts share: the commit they ran at, and plain (no noise) training of a
classifier for the undefended baselines. Imported as ``common`` from the scripts' own folder."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def commit() -> str | None:
    """Short commit of the checkout this script lives in, '+dirty' with uncommitted changes; None
    outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def train_clean(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    lr_at: Callable[[int], float] | None = None,
) -> float:
    """Cross-entropy on clean images (``images`` ``[N, C, H, W]``, uint8 or float in [0, 1]), one
    shuffle per epoch from a generator seeded by ``seed``; ``lr_at(epoch)``: the learning rate set
    at the start of each epoch (None: the optimizer's). Returns the training seconds."""
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
        model.train()
        perm = torch.randperm(len(images), generator=order)
        for s in range(0, len(images), batch_size):
            idx = perm[s : s + batch_size]
            x = images[idx].to(device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x
            loss = F.cross_entropy(model(x), labels[idx].to(device).long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start
