"""``engine: ray`` against the test teacher server: the local engine's records, limits kept across actors, resume after kill -9.

One local Ray (2 CPUs) serves the whole module: Ray's start-up is the slow part.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mediflow import generate
from small_runs import small_run_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_address() -> str:
    """The module's Ray; runs given it (or started in this process) connect to it instead of starting their own."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _config(base_url: str, out: Path, rpm: int | None = None, **extra) -> dict:
    limits = {"concurrency": 8, "rpm": rpm}
    return small_run_config(base_url, out, limits=limits, output={"dir": str(out), "shard_size": 4}, **extra)


def _records(out: Path) -> list[dict]:
    table = pq.read_table(sorted(str(p) for p in (out / "data").glob("part-*.parquet")))
    return table.drop(["created_at"]).to_pylist()


def test_ray_engine_writes_the_local_engines_records(ray_address, teacher_server, tmp_path) -> None:
    generate(_config(teacher_server, tmp_path / "local", documents_per_instruction=2, max_corrections=1))
    local_requests = teacher_server.stats()["requests"]
    teacher_server.reset()
    ray_config = {"actors": 2, "batch_size": 1}
    generate(_config(teacher_server, tmp_path / "ray", documents_per_instruction=2, max_corrections=1, engine="ray", ray=ray_config))
    assert teacher_server.stats()["requests"] == local_requests
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["session"]["requests"] == local_requests
    assert manifest["counts"] == json.loads((tmp_path / "local" / "manifest.json").read_text())["counts"]


def test_rpm_is_kept_in_aggregate_across_actors(ray_address, teacher_server, tmp_path) -> None:
    rpm, actors = 600, 3
    generate(_config(teacher_server, tmp_path / "limited", per_cell=5, engine="ray", ray={"actors": actors, "batch_size": 1}, rpm=rpm))
    arrivals = sorted(teacher_server.stats()["arrivals"])
    assert len(arrivals) == 60
    rate, burst = rpm / 60, rpm / 60  # each actor's bucket holds one second of its share: together one second of the rpm
    worst = max(j - i + 1 - rate * (arrivals[j] - arrivals[i]) for i in range(len(arrivals)) for j in range(i, len(arrivals)))
    assert worst <= burst + 2, f"{worst:.1f} requests above the {rpm} rpm line"


def test_kill_9_of_the_driver_then_rerun_repeats_only_what_was_in_flight(ray_address, start_teacher_server, tmp_path) -> None:
    server = start_teacher_server("--latency", "0.05")
    config = _config(server, tmp_path / "run", per_cell=4, engine="ray", ray={"actors": 2, "batch_size": 2, "address": ray_address})
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "mediflow", "generate", "--config", str(config_path), "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": "unused"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while server.stats()["served"] < 20 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(2)  # Ray ends the dead driver's actors
    assert server.stats()["served"] < 48

    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    by_key = server.stats()["by_key"]
    assert len(by_key) == 48  # 16 records x 3 calls
    assert sum(count - 1 for count in by_key.values()) <= 8  # at most the requests in flight at the kill (concurrency 8)

    local = tmp_path / "local"
    generate(_config(server, local, per_cell=4))
    assert _records(tmp_path / "run") == _records(local)
