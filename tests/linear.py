"""Linear binary classifiers: the test models whose smoothed versions have known answers.

For f(x) = argmax(-(w.x + b), w.x + b) and any noise symmetric about 0, the smoothed classifier g
has the same decision boundary w.x + b = 0, so its exact robust radius in an lp norm is
|w.x + b| / ||w||_q with q the dual exponent (l2 -> ||w||_2, l1 -> ||w||_inf, linf -> ||w||_1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DUAL = {"l2": 2.0, "l1": float("inf"), "linf": 1.0}


class LinearBinary(nn.Module):
    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone().float().flatten(), requires_grad=False)
        self.b = float(b)
        self.eval()

    def margin(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        m = self.margin(x)
        return torch.stack([-m, m], dim=1)

    def true_radius(self, x: Tensor, norm: str) -> Tensor:
        """Exact lp distance from each row of x to the decision boundary."""
        return self.margin(x).abs().double() / torch.linalg.vector_norm(self.w.double(), ord=DUAL[norm])

    def label(self, x: Tensor) -> Tensor:
        return (self.margin(x) > 0).long()
