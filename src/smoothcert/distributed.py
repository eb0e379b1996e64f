"""Several processes (or GPUs) sharing one dataset run, with PyTorch's own distributed runtime.

Launch the ordinary command under ``torchrun`` (or ``python -m torch.distributed.run``)::

    torchrun --standalone --nproc-per-node 4 -m -- smoothcert certify ... --out results/run.tsv

(The ``--`` keeps torchrun from reading ``--n``, ``--max``, ``--start`` as its own options.)

Each process (a *rank*) finds its place from the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``
variables that the launcher sets (:class:`Shard`, :func:`process_group`); without them nothing
changes. How the ranks split a run's inputs, write part files and merge them is the business of
the result files, :mod:`smoothcert.results.parts` (``result_rows``, ``merge_result_parts``).

A row depends only on ``(seed, idx)`` (see :func:`smoothcert.rng.input_seed`), so a sharded run
writes the same rows as one process with the same batch size and device type.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InputError

__all__ = [
    "DEFAULT_TIMEOUT",
    "Shard",
    "process_group",
    "rank_device",
    "shard_from_env",
]

#: How long a rank waits for the others at a synchronisation point before giving up. The only
#: long wait is at the end, for the slowest rank: shards differ by at most one input, so on equal
#: devices it is a few inputs' time (an ImageNet input at N=100k takes ~30 s with the 2019 loop);
#: hours leave room for unequal or shared devices. A rank that fails with an error reports it at
#: that point instead of leaving the others waiting, and a rank that dies is noticed by the
#: launcher (torchrun stops the others); the timeout is the backstop for a rank that hangs.
DEFAULT_TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class Shard:
    """This process's place in a run of ``world_size`` processes.

    ``rank`` (0 .. world_size-1) picks the inputs; ``local_rank`` (the process's number on its
    machine) picks the GPU; ``timeout`` bounds every wait for the other ranks.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    timeout: datetime.timedelta = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise InputError(f"need 0 <= rank < world_size, got rank {self.rank} of {self.world_size}")
        if self.local_rank < 0:
            raise InputError(f"local_rank must be >= 0, got {self.local_rank}")

    def take(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of ``indices``: every ``world_size``-th one, starting at ``rank``
        (shares differ in size by at most one and cover ``indices`` exactly once)."""
        return list(indices[self.rank :: self.world_size])

    def take_packs(self, indices: Sequence[int], done: Collection[int], pack: int) -> list[int]:
        """This rank's inputs not in ``done`` when ``indices`` are cut into fixed packs of ``pack``
        consecutive ones (certified together): packs with anything left are dealt out whole by
        :meth:`take`, so no pack is computed on two ranks. ``pack = 1`` is ``take`` of what is left."""
        packs = [list(indices[k : k + pack]) for k in range(0, len(indices), pack)]
        open_packs = [p for p in packs if any(i not in done for i in p)]
        return [i for p in self.take(open_packs) for i in p if i not in done]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def shard_from_env(*, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Shard | None:
    """The :class:`Shard` described by the launcher's ``WORLD_SIZE``, ``RANK`` and
    ``LOCAL_RANK`` variables, or None for a single process (no ``WORLD_SIZE``, or 1)."""
    world_size = _env_int("WORLD_SIZE")
    if world_size is None or world_size == 1:
        return None
    rank = _env_int("RANK")
    if rank is None:
        raise InputError("WORLD_SIZE is set but RANK is not; launch with torchrun or set both")
    local_rank = _env_int("LOCAL_RANK")
    return Shard(rank=rank, world_size=world_size, local_rank=rank if local_rank is None else local_rank,
                 timeout=timeout)


def rank_device(name: str | None, shard: Shard | None) -> torch.device:
    """The device this rank computes on: ``name`` (default: cuda if available, else cpu), and for
    a CUDA device without an index, GPU number ``local_rank`` — one GPU per process on a machine."""
    device = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if shard is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", shard.local_rank)
    return device


@contextmanager
def process_group(
    *, device: str | torch.device | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> Iterator[Shard | None]:
    """Join the launcher's process group for the duration of the block; yields this process's
    :class:`Shard`, or None when not launched by torchrun (then nothing is initialised).

    The backend is NCCL when ``device`` is a CUDA device (and the build has NCCL), gloo otherwise;
    on CUDA the device is also made current. The group is destroyed on leaving the block.
    A process group that already exists is used as it is and left alone.
    """
    shard = shard_from_env(timeout=timeout)
    if shard is None:
        yield None
        return
    if not dist.is_available():
        raise RuntimeError("launched with WORLD_SIZE > 1, but this torch build has no torch.distributed")
    if dist.is_initialized():
        yield shard
        return
    dev = rank_device(None if device is None else str(device), shard)
    backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=timeout)  # env://: address, port, rank, size
    try:
        yield shard
    finally:
        dist.destroy_process_group()
