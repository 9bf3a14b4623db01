"""The one atomic writer: temp file in the same folder, fsync, rename.

Readers (and a process killed mid-write) never see half a file: a path is either its old content or
its new one. Temp files are named ``.tmp-<pid>-<name>`` so the next run in the folder recognises and
removes a killed run's leftovers (:func:`remove_leftovers`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: Prefix of every temporary file or folder the contract writes (removed when the next run starts).
TEMP_PREFIX = ".tmp-"


def temp_path(path: Path) -> Path:
    """The temporary sibling ``path`` is written to before the rename."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (the folder's entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)``, fsync it, then rename it into place."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """One UTF-8 text file, atomically."""

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    write_atomically(path, write)


def write_json(path: Path, value: Any) -> None:
    """One JSON file (indented, UTF-8), atomically."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def write_parquet(path: Path, table: pa.Table) -> None:
    """One Parquet file (zstd), atomically."""
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def commit(tmp: Path, path: Path) -> None:
    """Publish a file already written at ``tmp`` (e.g. by a streaming Parquet writer): fsync, rename."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temp files and folders a killed run left in ``folder`` (and its ``data/``); return them."""
    removed: list[Path] = []
    for parent in (folder, folder / "data"):
        if not parent.is_dir():
            continue
        for leftover in parent.glob(f"{TEMP_PREFIX}*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
