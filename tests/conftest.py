"""Shared fixtures: the test teacher server as a real subprocess on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from mediflow.testing import TeacherServerURL
from mediflow.testing import teacher_server as run_teacher_server


@pytest.fixture(scope="session")
def _shared_teacher_server() -> Iterator[TeacherServerURL]:
    with run_teacher_server() as url:
        yield url


@pytest.fixture()
def teacher_server(_shared_teacher_server: TeacherServerURL) -> TeacherServerURL:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a test teacher subprocess, counters and settings reset.

    The value is a ``str`` (pass it as ``base_url``) with ``.stats()``, ``.control(**changes)`` and
    ``.reset()``. One process serves the whole session; each test starts from a clean state.
    """
    _shared_teacher_server.reset()
    return _shared_teacher_server


@pytest.fixture()
def start_teacher_server() -> Iterator[Callable[..., TeacherServerURL]]:
    """Start a dedicated test teacher with command-line flags: ``start_teacher_server("--latency", "0.1")``."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(run_teacher_server(*args))
