"""``engine: ray`` without ``ray.address`` starts a Ray on this machine for the run: a run that fails stops it too.

Its own module: the other Ray tests keep a Ray of their own running for their whole module.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fixtures import small_run_config

from mediflow import generate
from mediflow.errors import MediflowError

ray = pytest.importorskip("ray")


def test_no_room_on_the_ray_the_run_started_stops_that_ray_and_its_executor_before_the_error(teacher_server, tmp_path: Path) -> None:
    """Reproduction: the no-room error left Ray Data's executor thread scheduling the run's actors (in a notebook, a
    thread that could start Ray again on its own)."""
    assert not ray.is_initialized()
    config = small_run_config(teacher_server, tmp_path / "out", engine="ray", ray={"actors": 1, "num_cpus": 64, "resource_timeout": 2})
    with pytest.raises(MediflowError, match="no room for an actor") as refused:
        generate(config)
    assert "\n" not in str(refused.value)
    assert not ray.is_initialized()  # the run started it, the run stopped it
    left = [thread.name for thread in threading.enumerate() if thread.name.startswith(("StreamingExecutor-", "mediflow-ray-results"))]
    assert not left, left
