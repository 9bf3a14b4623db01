"""The ``mediflow`` command line: thin argument parsing over the library.

Each command group lives in its own module under ``mediflow.cli`` and exposes
``register(subparsers)``; the handler it installs returns an exit status. User errors
(:class:`mediflow.errors.MediflowError`) and file-system errors (a full or read-only disk, a
permission, a path that is a file) print one ``error: ...`` line and exit 2, never a traceback;
MediFlow's own warnings (a teacher that refuses the configured temperature, an input without judge
scores) print one ``warning: ...`` line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mediflow.cli import (
    audit_cmd,
    batches_cmd,
    export_cmd,
    generate_cmd,
    join_cmd,
    merge_cmd,
    pairs_cmd,
    quality_cmd,
    taxonomy_cmd,
    train_cmd,
)
from mediflow.errors import MediflowError
from mediflow.folders.guards import reading
from mediflow.redact import redact_text
from mediflow.version import __version__

_COMMAND_MODULES = (
    taxonomy_cmd,
    generate_cmd,
    join_cmd,
    quality_cmd,
    pairs_cmd,
    batches_cmd,
    export_cmd,
    audit_cmd,
    train_cmd,
    merge_cmd,
)

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_python_warning_format = warnings.formatwarning


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """MediFlow's own warnings as one line, like its errors; other libraries' keep Python's format (with the source line)."""
    if Path(filename).resolve().is_relative_to(_PACKAGE_ROOT):
        return f"warning: {redact_text(str(message))}\n"
    return _python_warning_format(message, category, filename, lineno, line)


def os_error_line(exc: OSError) -> str:
    """A file-system error as one line naming the file and the problem (``runs/a/data: No space left on device``)."""
    what = exc.strerror or next(iter(str(exc).splitlines()), type(exc).__name__)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = f"{what} (the disk or your quota is full: free space, then rerun the same command to resume)"
    return f"{exc.filename}: {what}" if exc.filename else what


def _config_file(args: argparse.Namespace) -> Path | None:
    """The config file a command was given (``--config``), if any."""
    config = getattr(args, "config", None)
    return Path(config) if isinstance(config, (str, Path)) else None


def build_parser() -> argparse.ArgumentParser:
    """The full parser, one sub-command per pipeline stage."""
    parser = argparse.ArgumentParser(
        prog="mediflow",
        description="Synthetic clinical instruction data with a teacher LLM, and small clinical models trained on it.",
    )
    parser.add_argument("--version", action="version", version=f"mediflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(subparsers)
    return parser


class _StderrLines(logging.Handler):
    """Each log record as one plain line on the current ``sys.stderr`` (tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: a broken stream never stops the run
            self.handleError(record)


def show_library_messages() -> None:
    """The library logs (it never prints); the CLI shows the ``mediflow`` loggers' INFO and above as plain
    lines on stderr. Other libraries' loggers keep their own defaults (httpx would log every request)."""
    library = logging.getLogger("mediflow")
    if not any(isinstance(handler, _StderrLines) for handler in library.handlers):
        library.addHandler(_StderrLines())
    library.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mediflow`` console script."""
    warnings.formatwarning = _warning_line
    show_library_messages()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        with reading(_config_file(args)):  # no output of the command may be, contain or sit inside its config file
            return int(args.handler(args) or 0)
    except MediflowError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {redact_text(os_error_line(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything finished so far is saved; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
