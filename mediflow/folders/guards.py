"""Guards that run before anything is written: where an output may go, links inside it, and its lock.

**One guard for every written path** (:func:`check_output`): a folder (every command's ``OUT``) or a
single file (``audit --html``, ``generate --plan-out``, ``judge --cache``, ``train eval``'s report,
a converted-model cache) is checked on its resolved path (symlinks and ``..`` seen through) before
anything is written:

* it has the right shape: an existing folder where a file is written, or a file where a folder
  (or any of its parents) would be, is refused;
* it is not, does not contain and does not sit inside any input (file or folder) or the command's
  config file (:func:`reading`: the CLI names each command's config file once, for every guard);
* it does not lie inside another MediFlow run's folder (a folder with a MediFlow manifest): only
  the command's own output folder (``own``) or one this process holds may contain it;
* the place accepts writes. A missing parent folder is **created**, once every guard has passed
  (:func:`make_parent`), the same for every command.

**No write follows a link inside an output folder** (:func:`check_no_links`): a symbolic link among
an output folder's own entries (``data/``, a shard, the manifest, the rejects, the card, the cache,
the lock, a model folder) is refused before anything is written, so a rerun or ``--overwrite``
never replaces another run's files through it. The output folder itself may be a link: it is
resolved, and the resolved folder is what every guard checks.

Two processes must never write one folder at once (the same config would be paid twice, different
configs would mix): the lock is an ``flock`` on ``OUT/.lock``, released by the kernel when the
holder dies, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from mediflow.errors import MediflowError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: The file that makes a folder a MediFlow run's folder (:mod:`mediflow.folders.manifest` writes it).
MANIFEST_FILE = "manifest.json"

#: The files the running command reads besides its data (its config files): no output may overlap them.
_READ_FILES: ContextVar[tuple[Path, ...]] = ContextVar("mediflow_read_files", default=())
#: The folders this process holds the lock of (resolved): its own outputs, which may contain its other outputs.
_HELD: set[Path] = set()


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


@contextlib.contextmanager
def reading(*paths: Path | str | None) -> Iterator[None]:
    """Within the block, every guard also protects ``paths`` (the command's config file): no output may be,
    contain or sit inside one. The CLI wraps each command in it; a library caller passes its paths as inputs."""
    token = _READ_FILES.set(_READ_FILES.get() + tuple(Path(p) for p in paths if p is not None))
    try:
        yield
    finally:
        _READ_FILES.reset(token)


def check_output(path: Path, inputs: Iterable[Path] = (), *, what: str = "output folder", file: bool = False, own: Path | None = None) -> Path:
    """The one guard for every path a command writes; see the module docstring. Returns ``path``.

    ``file``: ``path`` is a single file (a report, a plan, a cache), else a folder. ``inputs``: every
    file or folder the command reads (the config file comes from :func:`reading`). ``own``: the
    command's own output folder, which a file it writes (a report, predictions, a cache) may sit in.
    Writes nothing.
    """
    path = Path(path)
    _check_shape(path, what, file)
    check_no_overlap(path, inputs, what=what)
    _check_not_in_another_run(path, what, own)
    check_writable(path, what=what)
    return path


def make_parent(path: Path) -> Path:
    """Create the missing parent folders of a single-file output (after :func:`check_output`); return ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


def _check_shape(path: Path, what: str, file: bool) -> None:
    if path.is_dir() and file:
        raise MediflowError(f"{path}: the {what} is a folder; name a file")
    if path.exists() and not path.is_dir() and not file:
        raise MediflowError(f"{path}: the {what} exists and is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MediflowError(f"{path}: cannot create the {what}: {parent} is a file")
            break


def check_no_overlap(out: Path, inputs: Iterable[Path], *, what: str = "output folder") -> None:
    """A clear error when ``out`` is, contains, or is inside any of ``inputs`` or of the config files
    named by :func:`reading` (checked on resolved paths)."""
    target = _resolved(out)
    named: list[tuple[Path, str]] = [(Path(source), "the input") for source in inputs]
    named += [(source, "the config file") for source in _READ_FILES.get()]
    for source, label in named:
        resolved = _resolved(source)
        if target == resolved:
            raise MediflowError(f"{out}: the {what} is {label} {source}; choose another {'folder' if 'folder' in what else 'path'}")
        if target in resolved.parents:
            raise MediflowError(f"{out}: the {what} contains {label} {source}; writing it would destroy {label}")
        if resolved in target.parents:
            raise MediflowError(f"{out}: the {what} is inside {label} {source}; choose a {'folder' if 'folder' in what else 'path'} outside it")


def _check_not_in_another_run(path: Path, what: str, own: Path | None) -> None:
    """``path`` may not lie inside a MediFlow run's folder, unless that is ``own`` or a folder this process holds."""
    target = _resolved(path)
    mine = {_resolved(own)} if own is not None else set()
    for parent in target.parents:
        if parent in mine or parent in _HELD:
            return  # this command's own folder: its own guard checked where it sits
        kind = _run_kind(parent)
        if kind is not None:
            raise MediflowError(f"{path}: the {what} would be written inside {_shown(parent)}, the '{kind}' folder of another MediFlow run; choose a path outside it")


def _shown(path: Path) -> Path:
    """A resolved path as the user would write it: relative to the working folder when it is inside it."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _run_kind(folder: Path) -> str | None:
    """The kind of MediFlow run ``folder`` holds (from its manifest), or None when it is not a run's folder."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        value = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # somebody else's manifest.json
    if isinstance(value, dict) and {"kind", "status", "config_fingerprint"} <= value.keys():
        return str(value["kind"])
    return None


def check_writable(out: Path, *, what: str = "output folder") -> None:
    """The folder (or, while it does not exist, the folder it would be created in) accepts writes."""
    existing = next((p for p in (Path(out), *Path(out).parents) if p.exists()), Path("."))
    if existing.is_file():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MediflowError(f"{out}: cannot write the {what} in {existing} (permission denied or read-only file system)")


def check_no_links(folder: Path, owns: Callable[[str], bool]) -> None:
    """Refuse a symbolic link among ``folder``'s own entries (those ``owns`` accepts by name), at any depth.

    Writing through such a link (a ``data/`` pointing into another run, a manifest or a shard pointing
    at another run's) would replace or delete files that are not this run's. Foreign entries are never
    written, so they are not looked at.
    """
    root = Path(folder)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if not owns(entry.name):
            continue
        if entry.is_symlink():
            raise _linked(entry)
        if entry.is_dir():
            for parent, folders, files in os.walk(entry):
                for name in sorted(folders + files):
                    if Path(parent, name).is_symlink():
                        raise _linked(Path(parent, name))


def refuse_link(path: Path) -> Path:
    """``path`` itself must not be a symbolic link (checked again where a publish writes into a folder); return it."""
    if Path(path).is_symlink():
        raise _linked(Path(path))
    return Path(path)


def _linked(path: Path) -> MediflowError:
    return MediflowError(f"{path}: is a symbolic link (to {os.readlink(path)}); MediFlow never writes through a link inside an output folder: remove it, or choose another folder")


class FolderLock:
    """An exclusive, non-blocking lock on a folder, naming its holder (pid and command) in ``.lock``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False) -> None:
        """Take the lock, or stop at once with an error naming the process that holds it.

        With ``wait`` (a shared cache, where the other process is making what this one needs) it
        logs once (a warning) whom it waits for, then blocks until the holder is done. A ``.lock``
        that is a symbolic link is refused (opening it would truncate the link's target).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except PermissionError:
            raise MediflowError(f"{self.folder}: cannot write here (permission denied or read-only file system)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _linked(self.path) from None
            raise
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
        _HELD.add(_resolved(self.folder))

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(_resolved(self.folder))
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
    """Refuse ``folder`` while another process holds its lock, naming it; cheap (one ``flock`` probe), so a
    command that needs minutes before it opens its output (``generate`` builds its plan and cases) says it first."""
    holder = lock_holder(folder)
    if holder is not None:
        raise _in_use(Path(folder), holder)


def _in_use(folder: Path, holder: str) -> MediflowError:
    return MediflowError(f"{folder}: in use by another process ({holder}); wait for it to finish or stop it")


def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock right now (``pid N: command``), or None when nobody does."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
    return None
