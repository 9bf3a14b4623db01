"""Guards that run before anything is written: overlapping paths and the folder's exclusive lock.

An output folder must never be an input, hold one, or sit inside one (resolved paths, so symlinks
and ``..`` cannot sneak around the check): a stage that clears its output would otherwise delete
its own input. Two processes must never write one folder at once (the same config would be paid
twice, different configs would mix): the lock is an ``flock`` on ``OUT/.lock``, released by the
kernel when the holder dies, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from mediflow.errors import MediflowError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_no_overlap(out: Path, inputs: Iterable[Path], *, what: str = "output folder") -> None:
    """A clear error when ``out`` is, contains, or is inside any of ``inputs`` (checked on resolved paths)."""
    target = _resolved(out)
    for source in inputs:
        resolved = _resolved(source)
        if target == resolved:
            raise MediflowError(f"{out}: the {what} is the input {source}; choose another folder")
        if target in resolved.parents:
            raise MediflowError(f"{out}: the {what} contains the input {source}; writing it would destroy the input")
        if resolved in target.parents:
            raise MediflowError(f"{out}: the {what} is inside the input {source}; choose a folder outside it")


def check_folder_path(out: Path, *, what: str = "output folder") -> None:
    """``out`` must be a folder or not exist yet (a file there, or a file as a parent, is an error)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MediflowError(f"{out}: the {what} exists and is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MediflowError(f"{out}: cannot create the {what}: {parent} is a file")
            break


def check_writable(out: Path, *, what: str = "output folder") -> None:
    """The folder (or, while it does not exist, the folder it would be created in) accepts writes."""
    existing = next((p for p in (Path(out), *Path(out).parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MediflowError(f"{out}: cannot write the {what} in {existing} (permission denied or read-only file system)")


class FolderLock:
    """An exclusive, non-blocking lock on a folder, naming its holder (pid and command) in ``.lock``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock, or stop at once with an error naming the process that holds it.

        With ``wait`` (a shared cache, where the other process is making what this one needs) it
        logs once (a warning) whom it waits for, then blocks until the holder is done.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise MediflowError(f"{self.folder}: cannot write here (permission denied or read-only file system)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                os.close(fd)
                raise _in_use(self.folder, holder) from None
            logger.warning("%s: waiting for another process (%s)", self.folder, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {_command()[:300]}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _command() -> str:
    """This process's command line as the user typed it (``mediflow generate ...``)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program in ("mediflow", "__main__.py"):
        program = "mediflow"
    return " ".join([program, *sys.argv[1:]])


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 400).decode("utf-8", "replace").strip()
    return text or "a process that has just started"


def check_not_in_use(folder: Path) -> None:
    """Refuse ``folder`` at once when another process holds its lock, before a stage's costly start-up.

    :meth:`FolderLock.acquire` still decides (the other process may take the lock after this check);
    this only spares a second run the seconds it would spend before reaching the folder."""
    holder = lock_holder(folder)
    if holder is not None:
        raise _in_use(Path(folder), holder)


def _in_use(folder: Path, holder: str) -> MediflowError:
    return MediflowError(f"{folder}: in use by another process ({holder}); wait for it to finish or stop it")


def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock right now (``pid N: command``), or None when nobody does."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
    return None
