"""Reading a user's text file (config, taxonomy, prompt, error kinds): one place for the one-line errors.

A file that is missing, unreadable or not UTF-8 (a config saved as Latin-1, a binary file named by
mistake), or YAML with a syntax error, is a :class:`~mediflow.errors.MediflowError` naming the
file (and the error's line and column), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mediflow.errors import MediflowError


def read_text(path: str | Path, what: str = "file", error: type[MediflowError] = MediflowError) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file's role in the message (``config file``),
    ``error`` is the exception raised (a config reader raises :class:`~mediflow.errors.ConfigError`)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except IsADirectoryError:
        raise error(f"cannot read {what} {path}: it is a folder, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_yaml(path: str | Path, what: str = "file", error: type[MediflowError] = MediflowError, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """``path`` read as by :func:`read_text` and parsed as YAML with ``loader``; a syntax error is one
    ``error`` line naming the file, the line and column, and the problem."""
    text = read_text(path, what, error)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: YAML syntax error{where}: {problem}") from None
