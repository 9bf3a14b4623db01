"""One pattern for sync and async entry points: ``f_async`` does the work, ``f`` runs it from anywhere.

Every public operation that talks to a teacher (``generate``, ``curate``, ``judge``,
``build_pairs``, PIT task data) is written once as a coroutine, ``<name>_async``, for callers
that already run an event loop, and exposed as a plain function through :func:`run_sync`, which
works both in a script (no loop: ``asyncio.run``) and inside a running loop (a Jupyter cell, where
``asyncio.run`` would raise): there the coroutine runs on its own loop in a worker thread and the
caller waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion and return its result, whether or not a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediflow") as pool:
        return pool.submit(asyncio.run, coroutine).result()
