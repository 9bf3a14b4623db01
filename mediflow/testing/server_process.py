"""Run the test teacher as a real subprocess on a free loopback port, and talk to its control API.

Used by the test fixtures (``tests/conftest.py``) and ``benchmarks/throughput.py``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any


class TeacherServerURL(str):
    """The server's OpenAI base URL (``http://127.0.0.1:PORT/v1``), with its control calls attached."""

    #: The server's process id (the benchmark reads its CPU time from it); None when not started by us.
    pid: int | None = None

    @property
    def root(self) -> str:
        return self.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: requests, served, by_key, faults, in_flight, max_in_flight, settings."""
        return _call(self.root + "/stats")

    def control(self, **changes: Any) -> dict[str, Any]:
        """``POST /control``: e.g. ``control(sequence=["429", "500"])`` or ``control(latency=0.2)``."""
        return _call(self.root + "/control", changes)

    def reset(self) -> None:
        """``POST /reset``: zero the counters and restore the command-line settings."""
        _call(self.root + "/reset", {})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def teacher_server(*args: str, startup_timeout: float = 30.0) -> Iterator[TeacherServerURL]:
    """Start ``python -m mediflow.testing.teacher --port <free> *args``; yield its base URL; stop it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mediflow.testing.teacher", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = TeacherServerURL(f"http://127.0.0.1:{port}/v1")
    url.pid = process.pid
    try:
        _wait_until_up(url, process, startup_timeout)
        yield url
    finally:
        stop_process(process, grace=10)
        if process.stderr is not None:
            process.stderr.close()


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """Ask a server subprocess to stop; kill it if it is still running after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_up(url: TeacherServerURL, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"test teacher exited with status {process.returncode}: {error[-2000:]}")
        try:
            _call(url.root + "/stats")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"test teacher did not start within {timeout:.0f}s")


def _call(url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer
