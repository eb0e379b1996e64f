"""Several processes (or GPUs) sharing one dataset run, with PyTorch's own distributed runtime.

Launch the ordinary command under ``torchrun`` (or ``python -m torch.distributed.run``)::

    torchrun --standalone --nproc-per-node 4 -m -- smoothcert certify ... --out results/run.tsv

(The ``--`` keeps torchrun from reading ``--n``, ``--max``, ``--start`` as its own options.)

Each process (a *rank*) finds its place from the ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``
variables that the launcher sets; without them nothing changes. The inputs still to do are
split round-robin over the ranks; rank ``r`` appends its rows to its own part file
``run.tsv.part-<r>-of-<K>`` (flushed per row, guarded by its sidecar like any result file).
When every rank is through, rank 0 folds the part files into ``run.tsv``: sorted by ``idx``,
one row per input, the same header and the same ``.json`` sidecar as a single-process run.

A row depends only on ``(seed, idx)`` (see :func:`smoothcert.rng.input_seed`), so a
sharded run writes the same rows as one process with the same batch size and device type.
Interrupted runs resume with any number of processes, one included: a run first folds the
part files it finds into ``--out`` and then does only the missing inputs.
:func:`merge_result_parts` is the fold, public so that part files can also be merged by hand
(``smoothcert merge run.tsv``).

Only control messages travel between ranks (which inputs are done, who failed), always over
gloo; on CUDA the default group is NCCL, so user code can still use it for tensors.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .errors import InputError
from .files import atomic_write_text
from .results import COLUMNS, ConfigMismatchError, ResultWriter, config_diff, sidecar_path

__all__ = [
    "DEFAULT_TIMEOUT",
    "Shard",
    "shard_from_env",
    "rank_device",
    "process_group",
    "part_path",
    "find_parts",
    "merge_result_parts",
    "result_rows",
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


# ------------------------------------------------------------------------------- part files

_PART = r"\.part-(\d+)-of-(\d+)"


def part_path(out: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    """The part file of rank ``rank`` of ``world_size`` for the result file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.part-{rank}-of-{world_size}")


def find_parts(out: str | os.PathLike[str]) -> list[Path]:
    """Every part file beside ``out`` (from runs of any size), ordered by (size, rank)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(re.escape(out.name) + _PART)
    found = []
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file():
            found.append(((int(m.group(2)), int(m.group(1))), p))
    return [p for _, p in sorted(found)]


@dataclass
class _Piece:
    """The complete rows of one result or part file (a half-written last line is left out)."""

    path: Path
    header: list[str] | None
    rows: list[tuple[int, str]]  # (idx, line without its newline)

    @classmethod
    def read(cls, path: Path) -> _Piece:
        if not path.exists():
            return cls(path, None, [])
        lines = path.read_bytes().split(b"\n")[:-1]  # what follows the last newline is cut off
        if not lines:
            return cls(path, None, [])
        header = lines[0].decode("utf-8").split("\t")
        rows = []
        for line in lines[1:]:
            text = line.decode("utf-8")
            fields = text.split("\t")
            if len(fields) != len(header) or not fields[0].lstrip("-").isdigit():
                raise InputError(f"{path}: malformed row {text[:80]!r}; fix or remove the file")
            rows.append((int(fields[0]), text))
        return cls(path, header, rows)

    def config(self) -> dict[str, Any]:
        side = sidecar_path(self.path)
        if not side.exists():
            raise ConfigMismatchError(
                f"{self.path} holds rows but has no {side.name} describing how they were made; "
                "refusing to merge it — remove it or restore its sidecar"
            )
        return json.loads(side.read_text())


def _default_ignore() -> tuple[str, ...]:
    from .runs.certify import _MAY_CHANGE  # settings a resumed run may change; imported late (cycle)

    return tuple(_MAY_CHANGE)


def merge_result_parts(
    out: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> list[int]:
    """Fold the part files of ``out`` (see :func:`find_parts`) and the rows ``out`` already holds
    into ``out``; returns the sorted ``idx`` of its rows.

    The result is sorted by ``idx`` with one row per input (of duplicates, the row already in
    ``out`` wins, then the part of the smaller run, then the lower rank); half-written last lines
    are dropped. ``out`` and its sidecar are replaced atomically, and only then are the part files
    and their sidecars removed, so an interruption at any point loses no row. Without part files
    nothing is written.

    Every file holding rows must have been made with the same configuration (its ``.json``
    sidecar), apart from the keys in ``ignore`` (default: those a resumed run may change, as listed in
    :mod:`smoothcert.runs.certify`: batch size, device type and the speed-only engine settings), and with the same columns; ``config`` and ``columns``, when
    given, must match too. Otherwise :class:`~smoothcert.results.ConfigMismatchError` is raised
    before anything is touched. The merged sidecar is ``config`` if given, else the most recent
    sidecar of the files merged (as a single-process resume records its own settings).
    """
    out = Path(out)
    parts = find_parts(out)
    ignore = _default_ignore() if ignore is None else tuple(ignore)
    current = _Piece.read(out)
    if not parts:
        return sorted({i for i, _ in current.rows})
    pieces = [current, *(_Piece.read(p) for p in parts)]
    with_rows = [p for p in pieces if p.rows]

    want_config = None if config is None else json.loads(json.dumps(dict(config)))
    want_columns = None if columns is None else list(columns)
    ref_path = None
    for piece in with_rows:
        if want_columns is None:
            want_columns = piece.header
        elif piece.header != want_columns:
            raise ConfigMismatchError(
                f"{piece.path} has columns {piece.header} but {want_columns} are expected; refusing to merge"
            )
        cfg = piece.config()
        if want_config is None:
            want_config, ref_path = cfg, piece.path
            continue
        diff = config_diff(want_config, cfg, ignore)
        if diff:
            against = f"{ref_path}" if ref_path is not None else "this run"
            details = "; ".join(f"{k}: {against} has {want_config.get(k)!r}, {piece.path.name} has {cfg.get(k)!r}"
                                for k in diff)
            raise ConfigMismatchError(
                f"{piece.path} was written with a different configuration ({details}); refusing to mix "
                "results — re-run with the original settings, or move the part files away"
            )

    if want_columns is None:  # no rows anywhere: keep whichever header there is
        want_columns = next((p.header for p in pieces if p.header), list(COLUMNS))
    if config is not None:
        side_text = json.dumps(want_config, indent=2, sort_keys=True) + "\n"
    else:
        sides = [sidecar_path(p.path) for p in (with_rows or pieces) if sidecar_path(p.path).exists()]
        side_text = max(sides, key=lambda s: s.stat().st_mtime_ns).read_text() if sides else None

    merged: dict[int, str] = {}
    for piece in pieces:
        for i, line in piece.rows:
            merged.setdefault(i, line)
    text = "\t".join(want_columns) + "\n" + "".join(merged[i] + "\n" for i in sorted(merged))
    out.parent.mkdir(parents=True, exist_ok=True)
    if side_text is not None:
        # The sidecar first: it describes the old rows as well (same configuration up to ignored keys).
        atomic_write_text(sidecar_path(out), side_text)
    atomic_write_text(out, text)
    for p in parts:
        sidecar_path(p).unlink(missing_ok=True)
        p.unlink(missing_ok=True)
    return sorted(merged)


# ------------------------------------------------------------------------- one run's rows

_REMOTE_ERRORS: dict[str, type[Exception]] = {
    "ConfigMismatchError": ConfigMismatchError,
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
}


def _describe(e: BaseException) -> tuple[str, str]:
    name = next((n for n, t in _REMOTE_ERRORS.items() if type(e) is t), type(e).__name__)
    return name, str(e)


def _sync(what: str, shard: Shard, call: Any, *args: Any, **kwargs: Any) -> Any:
    """A collective call whose failure (a rank gone, the timeout passed) says what to do next."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as e:
        raise RuntimeError(
            f"rank {shard.rank} of {shard.world_size}: the ranks did not all reach {what} within "
            f"{shard.timeout} ({e}); finished rows are kept in the part files — re-run the same "
            "command (any number of processes) or `smoothcert merge` the result file"
        ) from e


@contextmanager
def result_rows(
    out: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    indices: Iterable[int],
    columns: tuple[str, ...] = COLUMNS,
    ignore: tuple[str, ...] = (),
    shard: Shard | None = None,
    pack: int = 1,
) -> Iterator[tuple[ResultWriter, list[int], int]]:
    """Open the rows of one run: yields ``(writer, todo, kept)`` — the writer to append rows to,
    the inputs of ``indices`` this process still has to do, in order, and how many of
    ``indices`` were already done.

    Single process (``shard=None``): part files left by an interrupted sharded run are merged into
    ``out`` first, then ``out`` is opened as usual (:class:`~smoothcert.results.ResultWriter`).

    Sharded (all ranks enter together; needs :func:`process_group`): rank 0 merges left-over
    parts, checks the configuration against ``out`` and tells the others which inputs are done
    (or why the run is refused); the rest is split by :meth:`Shard.take` and each rank writes
    its own part file; with ``pack = K > 1`` the split is by whole packs of K consecutive
    ``indices`` (inputs certified together, :meth:`Shard.take_packs`), so each pack stays on one
    rank. On leaving, the ranks wait for each other; rank 0 merges the parts into ``out``. An
    error on one rank is reported at that point — the others' rows are merged and kept — and is
    raised on that rank; a KeyboardInterrupt leaves the part files for the next run.
    """
    todo_all = list(indices)
    if shard is None:
        if find_parts(out):
            merge_result_parts(out, config=config, columns=columns, ignore=ignore)
        with ResultWriter(out, config=config, columns=columns, ignore=ignore) as writer:
            todo = [i for i in todo_all if i not in writer.done]
            yield writer, todo, len(todo_all) - len(todo)
        return

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("a sharded run needs a process group: wrap it in smoothcert.distributed.process_group()")
    if (dist.get_rank(), dist.get_world_size()) != (shard.rank, shard.world_size):
        raise InputError(f"shard {shard.rank} of {shard.world_size} does not match the process group "
                         f"(rank {dist.get_rank()} of {dist.get_world_size()})")
    # Control messages over gloo: it runs on the CPU, honours the timeout and leaves NCCL to the user.
    own_group = dist.get_backend() != "gloo"
    group = dist.new_group(backend="gloo", timeout=shard.timeout) if own_group else None
    try:
        box: list[Any] = [None]
        failure: BaseException | None = None
        if shard.rank == 0:
            try:
                merge_result_parts(out, config=config, columns=columns, ignore=ignore)
                with ResultWriter(out, config=config, columns=columns, ignore=ignore) as head:
                    box = [("ok", sorted(head.done))]
            except Exception as e:  # reported to every rank, raised on all of them below
                failure, box = e, [("error", *_describe(e))]
        _sync("the start", shard, dist.broadcast_object_list, box, src=0, group=group)
        status = box[0]
        if status[0] == "error":
            if failure is not None:
                raise failure
            raise _REMOTE_ERRORS.get(status[1], RuntimeError)(f"(from rank 0) {status[2]}")
        done = set(status[1])
        remaining = [i for i in todo_all if i not in done]
        with ResultWriter(part_path(out, shard.rank, shard.world_size), config=config, columns=columns,
                          ignore=ignore) as writer:
            mine = [i for i in shard.take_packs(todo_all, done, pack) if i not in writer.done]
            try:
                yield writer, mine, len(todo_all) - len(remaining)
            except Exception as e:
                writer.close()
                _finish(out, shard, group, _describe(e), columns=columns, ignore=ignore)
                raise
            # An interrupt (KeyboardInterrupt, SystemExit) passes straight through: no rank waits
            # for the others, and the part files are merged by the next run.
            writer.close()
            _finish(out, shard, group, None, columns=columns, ignore=ignore)
    finally:
        if own_group:
            dist.destroy_process_group(group)


def _finish(out: str | os.PathLike[str], shard: Shard, group: Any, error: tuple[str, str] | None, *,
            columns: tuple[str, ...], ignore: tuple[str, ...]) -> None:
    """Wait for every rank, merge on rank 0, and wait for the merge: a rank that failed exits only
    after it, so a launcher that stops the others on the first failure cannot cut the merge short."""
    errors: list[Any] = [None] * shard.world_size
    _sync("the end", shard, dist.all_gather_object, errors, error, group=group)
    merge_error: Exception | None = None
    if shard.rank == 0:
        try:
            merge_result_parts(out, columns=columns, ignore=ignore)
        except Exception as e:  # raised below, once the others know
            merge_error = e
        for r, failed in enumerate(errors):
            if failed is not None and r != 0:
                warnings.warn(f"rank {r} failed ({failed[0]}: {failed[1]}); the other ranks' rows are merged "
                              f"into {out}; re-run the same command to do the rest", RuntimeWarning, stacklevel=5)
    _sync("the merge", shard, dist.barrier, group=group)
    if merge_error is not None:
        raise merge_error
