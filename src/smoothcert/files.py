"""Writing files so that an interrupted run never leaves half of one behind; hashing them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

try:  # POSIX; elsewhere result files are not locked (documented in FileLock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .errors import ResultFileError

__all__ = ["FileLock", "atomic_write", "atomic_write_text", "check_output_path", "file_sha256", "lock_path"]


def check_output_path(path: str | os.PathLike[str], *, what: str = "output") -> Path:
    """``path`` as a Path if a file can be written there, creating its missing parent folders;
    else a ResultFileError in one line: ``path`` is a folder, a parent is a file, or the folder
    cannot be created or written. Meant to run before any work, so a run never fails at its end."""
    path = Path(path)
    if path.is_dir():
        raise ResultFileError(f"{what} {path} is a folder; give a file name (e.g. {path / 'run.tsv'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ResultFileError(f"cannot write {what} {path}: {parent} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultFileError(f"cannot create the folder of {what} {path}: {e.strerror or e}") from None
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise ResultFileError(f"cannot write {what} {path}: {target} is not writable")
    return path


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of ``path``: ``run.tsv`` -> ``run.tsv.lock`` (present while a writer holds it)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


class FileLock:
    """An exclusive lock on ``path`` for one writer at a time, held from :meth:`acquire` (or
    ``with``) to :meth:`release`: ``fcntl.flock`` on :func:`lock_path` (POSIX; released by the OS
    when the process dies, so a crashed run never leaves a stale lock). Two locks on the same path
    exclude each other within one process too (each opens its own file description).

    ``wait=False``: a second writer gets a ResultFileError naming the file at once;
    ``wait=True``: it blocks until the first releases. On systems without ``fcntl`` the lock is
    a no-op.
    """

    def __init__(self, path: str | os.PathLike[str], *, wait: bool = False) -> None:
        self.path = Path(path)
        self.wait = bool(wait)
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        if self._fd is not None or fcntl is None:
            return self
        lock = lock_path(self.path)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise ResultFileError(
                    f"{self.path} is being written by another run (its lock {lock.name} is held); wait for that "
                    "run to finish (--wait waits for it) or choose another --out"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder removes the lock file on release: a lock taken on a file that is no longer
            # (or no longer the same) at that path is worthless, so try again on the current one.
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                os.close(fd)
                continue
            mine = os.fstat(fd)
            if (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino):
                break
            os.close(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Unlink while still holding it (see acquire), then close: closing releases the flock.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path(self.path))
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Replace ``path`` by what ``write`` puts into a binary file, in one step.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is
    renamed over ``path`` (``os.replace``): a reader, or a crash, sees the old file or the new one,
    never half of one. The new file gets the permissions a plain ``open()`` would give it, and the
    rename itself is made durable where the OS allows (POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes the file 0600
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # directories cannot be opened on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex (read in 1 MiB blocks; checkpoints and weights are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
