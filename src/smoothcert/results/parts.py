"""Part files of a sharded run, their merge, and the rows of one run (single process or sharded).

Under ``torchrun`` (see :mod:`smoothcert.distributed`) the inputs still to do are split
round-robin over the ranks; rank ``r`` appends its rows to its own part file
``run.tsv.part-<r>-of-<K>`` (flushed per row, guarded by its sidecar like any result file). When
every rank is through, rank 0 folds the part files into ``run.tsv``: sorted by ``idx``, one row
per input, the same header and the same ``.json`` sidecar as a single-process run. Interrupted
runs resume with any number of processes, one included: a run first folds the part files it finds
into ``--out`` and then does only the missing inputs. :func:`merge_result_parts` is the fold,
public so that part files can also be merged by hand (``smoothcert merge run.tsv``).

Only control messages travel between ranks (which inputs are done, who failed), always over
gloo; on CUDA the default group is NCCL, so user code can still use it for tensors.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..distributed import Shard
from ..errors import ConfigMismatchError, InputError, MissingFileError, ResultFileError
from ..files import FileLock, atomic_write_text, check_output_path
from .reader import ResultTable, read_table
from .schema import COLUMNS, MAY_CHANGE
from .writer import ResultWriter, config_diff, normalise_config, read_config, sidecar_path, sidecar_text

__all__ = ["find_parts", "merge_result_parts", "part_path", "result_rows"]

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


def _read(path: Path) -> ResultTable | None:
    """The complete rows of one result or part file (the rule of :mod:`~smoothcert.results.reader`),
    or None when it does not exist."""
    try:
        return read_table(path)
    except MissingFileError:
        return None


def _config(table: ResultTable) -> dict[str, Any]:
    config = read_config(table.path)
    if config is None:
        raise ConfigMismatchError(
            f"{table.path} holds rows but has no {sidecar_path(table.path).name} describing how they were made; "
            "refusing to merge it — remove it or restore its sidecar"
        )
    return config


def merge_result_parts(
    out: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    ignore: Iterable[str] = MAY_CHANGE,
) -> list[int]:
    """Fold the part files of ``out`` (see :func:`find_parts`) and the rows ``out`` already holds
    into ``out``; returns the sorted ``idx`` of its rows.

    The result is sorted by ``idx`` with one row per input (of an ``idx`` in several files, the row
    already in ``out`` wins, then the part of the smaller run, then the lower rank); torn last rows
    are dropped with a warning. Every file is read by :func:`~smoothcert.results.reader.read_table`:
    a malformed row or an ``idx`` repeated within one file raises ResultFileError naming it. ``out``
    and its sidecar are replaced atomically, and only then are the part files and their sidecars
    removed, so an interruption at any point loses no row. Without part files nothing is written.

    Every file holding rows must have been made with the same configuration (its ``.json``
    sidecar), apart from the keys in ``ignore`` (default: :data:`~smoothcert.results.schema.MAY_CHANGE`,
    the settings a resumed run may change), and with the same columns; ``config`` and ``columns``,
    when given, must match too. Otherwise ConfigMismatchError is raised before anything is touched.
    The merged sidecar is ``config`` if given, else the most recent sidecar of the files merged (as
    a single-process resume records its own settings).
    """
    out = Path(out)
    parts = find_parts(out)
    ignore = tuple(ignore)
    current = _read(out)
    if not parts:
        return sorted(current.idx) if current is not None else []
    pieces = [t for t in (current, *(_read(p) for p in parts)) if t is not None]
    with_rows = [t for t in pieces if len(t)]

    want_config = None if config is None else normalise_config(config)
    want_columns = None if columns is None else tuple(columns)
    ref_path = None
    for piece in with_rows:
        if want_columns is None:
            want_columns = piece.columns
        elif piece.columns != want_columns:
            raise ConfigMismatchError(
                f"{piece.path} has columns {list(piece.columns)} but {list(want_columns)} are expected; "
                "refusing to merge"
            )
        cfg = _config(piece)
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
        want_columns = next((t.columns for t in pieces if t.columns), COLUMNS)
    if config is not None:
        side_text = sidecar_text(want_config or {})
    else:
        sides = [sidecar_path(t.path) for t in (with_rows or pieces) if sidecar_path(t.path).exists()]
        side_text = max(sides, key=lambda s: s.stat().st_mtime_ns).read_text() if sides else None

    merged: dict[int, str] = {}
    for piece in pieces:
        for i, line in zip(piece.idx, piece.text, strict=True):
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

# Errors rank 0 may meet while opening the run, raised again by name on the other ranks.
_REMOTE_ERRORS: dict[str, type[Exception]] = {
    "ConfigMismatchError": ConfigMismatchError,
    "ResultFileError": ResultFileError,
    "MissingFileError": MissingFileError,
    "InputError": InputError,
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
    ignore: tuple[str, ...] = MAY_CHANGE,
    shard: Shard | None = None,
    pack: int = 1,
    wait: bool = False,
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

    One writer per file: ``out`` is locked (:class:`~smoothcert.files.FileLock`) for the whole
    run (single process, or rank 0 of a sharded run) and each part file by its own writer; a
    second run on the same ``out`` is refused with a ResultFileError naming it, or waits for the
    first with ``wait=True``.
    """
    todo_all = list(indices)
    if shard is None:
        with FileLock(check_output_path(out, what="result file"), wait=wait):
            if find_parts(out):
                merge_result_parts(out, config=config, columns=columns, ignore=ignore)
            with ResultWriter(out, config=config, columns=columns, ignore=ignore, lock=False) as writer:
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
    head_lock = FileLock(out, wait=wait)  # rank 0 holds out's lock from the start to the merge
    try:
        box: list[Any] = [None]
        failure: BaseException | None = None
        if shard.rank == 0:
            try:
                head_lock.path = check_output_path(out, what="result file")
                head_lock.acquire()
                merge_result_parts(out, config=config, columns=columns, ignore=ignore)
                with ResultWriter(out, config=config, columns=columns, ignore=ignore, lock=False) as head:
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
                          ignore=ignore, wait=wait) as writer:
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
        head_lock.release()
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
