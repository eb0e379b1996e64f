"""Random streams: generators from seeds, and independent per-input seeds of a dataset run.

Each input of a run gets its own stream derived from ``(seed, idx)`` by NumPy's SeedSequence
hashing (not ``seed + idx``, which would overlap across runs), so a row does not depend on which
inputs came before it: resumed, sharded and packed runs reproduce the rows of an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["input_seed", "make_generator", "sub_seed"]


def make_generator(
    seed_or_generator: int | torch.Generator | None, device: torch.device | str
) -> torch.Generator | None:
    """A generator on ``device`` seeded with an int; a generator is passed through; None stays None
    (then torch's global RNG is used)."""
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    g = torch.Generator(device=device)
    g.manual_seed(int(seed_or_generator))
    return g


def input_seed(seed: int, idx: int) -> int:
    """A 63-bit seed for input ``idx`` of a run seeded with ``seed``: the certificate's stream."""
    return sub_seed(seed, idx)


def sub_seed(seed: int, idx: int, *keys: int) -> int:
    """A 63-bit stream for one purpose (``keys``) of input ``idx``: the SeedSequence hash of the
    distinct entropy ``[seed, idx, *keys]``, independent of the streams of other keys and of
    :func:`input_seed` (no keys)."""
    return int(np.random.SeedSequence([int(seed), int(idx), *keys]).generate_state(1, np.uint64)[0] >> 1)
