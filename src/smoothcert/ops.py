"""Small tensor operations shared by attacks, training losses and certificates."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = ["log_mean_softmax", "mse", "psnr", "upcast_logits"]


def upcast_logits(t: Tensor) -> Tensor:
    """``t`` in float32 if it is a narrower float (fp16, bf16); float32 and float64 are kept, so a
    float64 model's probabilities stay float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def log_mean_softmax(logits: Tensor) -> Tensor:
    """log((1/m) Σ_i softmax(logits_i)) [B, K] from ``logits`` [m, B, K] (or log-probabilities, on
    which log_softmax is the identity): the plug-in estimate of the smoothed soft classifier's
    log-probabilities over m noise draws (Salman et al. 2019, Sec. 3), computed stably in log space
    in float32 or wider (:func:`upcast_logits`). Rows exp-sum to 1; differentiable."""
    if logits.dim() != 3:
        raise InputError(f"logits must be [m, B, K], got shape {list(logits.shape)}")
    log_p = F.log_softmax(upcast_logits(logits), dim=-1)
    return torch.logsumexp(log_p, dim=0) - math.log(logits.shape[0])


def mse(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean squared error ``[B]`` (float64, no gradient) between ``[B, ...]`` tensors."""
    if output.shape != reference.shape:
        raise InputError(f"shapes differ: {tuple(output.shape)} vs {tuple(reference.shape)}")
    return (output.detach().double() - reference.detach().double()).flatten(1).pow(2).mean(dim=1)


def psnr(mse_value: Tensor | float, *, data_range: float = 1.0) -> Tensor:
    """PSNR in dB from an MSE, 10·log10(data_range² / MSE); +inf at MSE 0, −inf at MSE inf."""
    m = torch.as_tensor(mse_value, dtype=torch.float64)
    return 10 * torch.log10(float(data_range) ** 2 / m)
