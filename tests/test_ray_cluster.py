"""``engine: ray`` on a simulated multi-node cluster (``ray.cluster_utils.Cluster``): a head with no CPU, and worker
nodes started from their own working folders, as on a real cluster whose nodes share the output folder's storage.

Each test is a reproduction of what a real cluster hit: relative paths that named another folder on the
workers, a worker node lost mid-run, the judge restarting its actors per input file, a run with no room
left for an actor, a cluster that wants an auth token.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fixtures import TEST_TEACHER, small_run_config, unjudged, write_output_folder

from mediflow import generate
from mediflow.cli import main
from mediflow.errors import MediflowError
from mediflow.quality import JudgeConfig, run_judge
from mediflow.scale.ray_runner import ActorSession, RunContext

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

PROMPTS = Path(__file__).resolve().parents[1] / "mediflow" / "_data" / "prompts"


class Nodes:
    """The module's cluster: the head (0 CPU) and its worker nodes, each started from its own working folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "temp_dir": str(root / "ray")})
        self.workers = [self.add(f"worker{i}") for i in range(2)]

    def add(self, name: str) -> Any:
        """A worker node with 1 CPU whose processes run in ``root/name`` (its own working folder)."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        here = os.getcwd()
        os.chdir(folder)
        try:
            return self.cluster.add_node(num_cpus=1)
        finally:
            os.chdir(here)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = Path(f"/tmp/mediflow-cluster-{os.getpid()}")  # Ray's socket paths must stay short
    root.mkdir(exist_ok=True)
    cluster = Nodes(root)
    ray.init(address=cluster.cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield cluster
    finally:
        # a dataset a failed run left executing (the no-room test) cancels its tasks after the shutdown, and Ray's
        # auto-connect would then join the cluster again from that thread: the cluster's shutdown refuses to remove the node
        auto_init_hook = importlib.import_module("ray._private.auto_init_hook")
        auto_init_hook.enable_auto_connect = False
        ray.shutdown()
        cluster.cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def _records(out: Path) -> list[dict]:
    table = pq.read_table(sorted(str(p) for p in (out / "data").glob("part-*.parquet")))
    return table.drop(["created_at"]).to_pylist()


def _cached(out: Path) -> int:
    import sqlite3

    db = sqlite3.connect(out / "cache.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    finally:
        db.close()


def test_relative_paths_reach_every_node_and_the_records_equal_the_local_engines(nodes, teacher_server, tmp_path, monkeypatch) -> None:
    """Reproduction: a relative ``--out`` split the cache (actors opened it in their node's working folder: the run's
    own cache had 0 rows and a rerun paid again), and a relative prompts folder was not found on the workers."""
    driver = tmp_path / "driver"
    shutil.copytree(PROMPTS, driver / "prompts")
    monkeypatch.chdir(driver)
    settings = {"documents_per_instruction": 2, "prompts": "prompts", "limits": {"concurrency": 8}}
    on_ray = small_run_config(teacher_server, Path("runs/ray"), output={"dir": "runs/ray", "shard_size": 4}, engine="ray", ray={"actors": 2, "batch_size": 1}, **settings)
    generate(on_ray)
    requests = teacher_server.stats()["requests"]
    assert _cached(driver / "runs/ray") == requests  # every answer in the run's own cache
    assert not list(nodes.root.glob("worker*/runs"))  # nothing written in a worker's working folder
    assert not (driver / "runs/ray/cache-segments").exists()  # every actor's segment merged

    teacher_server.reset()
    generate(on_ray, overwrite=False)  # the rerun finds everything done: nothing paid again
    assert teacher_server.stats()["requests"] == 0

    generate(small_run_config(teacher_server, Path("runs/local"), output={"dir": "runs/local", "shard_size": 4}, **settings))
    assert _records(driver / "runs/ray") == _records(driver / "runs/local")


def test_a_worker_node_lost_mid_run_repeats_only_the_work_in_flight(nodes, start_teacher_server, tmp_path) -> None:
    """Reproduction: after an actor died its requests were not counted (471 sent + 129 cached for 600 served)."""
    server = start_teacher_server("--latency", "0.05")
    config = small_run_config(server, tmp_path / "ray", per_cell=6, limits={"concurrency": 4}, output={"dir": str(tmp_path / "ray"), "shard_size": 4}, engine="ray", ray={"actors": 2, "batch_size": 1})
    failure: list[BaseException] = []

    def run() -> None:
        try:
            generate(config)
        except BaseException as exc:  # handed to the test
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while server.stats()["served"] < 20 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.02)
    lost = _node_of_an_engine_actor(nodes)
    nodes.workers.remove(lost)
    nodes.cluster.remove_node(lost)  # the node and every process on it (an actor among them) are gone
    nodes.workers.append(nodes.add(f"worker-after-{len(nodes.workers)}"))
    worker.join(timeout=300)
    assert not worker.is_alive() and not failure, failure

    stats = server.stats()
    repeated = sum(count - 1 for count in stats["by_key"].values())
    assert repeated <= 4, repeated  # at most what was in flight on the lost actor (its concurrency: 4 / 2 actors, with retries)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    sent = manifest["session"]["requests"] - manifest["session"]["cache_hits"]
    assert stats["served"] - 4 <= sent <= stats["served"], (sent, stats["served"])  # the dead actor's answers are counted
    local = small_run_config(server, tmp_path / "local", per_cell=6, output={"dir": str(tmp_path / "local"), "shard_size": 4})
    generate(local)
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")


def _node_of_an_engine_actor(nodes: Nodes) -> Any:
    """A worker node that runs one of the run's engine actors (Ray may pack both actors on one node: the other node's
    loss would test nothing)."""
    state = importlib.import_module("ray._private.state")  # the GCS's actor table: no dashboard in this cluster
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        busy = {actor["Address"]["NodeID"] for actor in state.actors().values() if actor["State"] == "ALIVE" and "_EngineActor" in actor["ActorClassName"]}
        for worker in nodes.workers:
            if worker.node_id in busy:
                return worker
        time.sleep(0.1)
    raise AssertionError("no engine actor on a worker node")


def _tables(out: Path) -> str:
    kept = pq.read_table(sorted(str(p) for p in (out / "data").glob("*.parquet"))).to_pylist()
    return json.dumps([kept, pq.read_table(out / "rejects.parquet").to_pylist()], default=str, sort_keys=True)


def test_the_judge_on_a_many_file_folder_starts_its_actors_once(nodes, teacher_server, tmp_path) -> None:
    """Reproduction: the judge started a new dataset and new actors per input file (12 files: 24 actor processes); and,
    once it read the folder as one dataset, it hung when its actors left no node a whole free CPU (3 x 0.5 CPU over two
    1-CPU nodes): Ray Data's read tasks each wait for a whole CPU."""
    records = unjudged(documents=8)
    source = write_output_folder(tmp_path / "in", records, shards=len(records) // 2)
    assert len(list((source / "data").glob("*.parquet"))) >= 6
    settings = {"teacher": TEST_TEACHER, "base_url": teacher_server, "progress": False, "samples": 2, "thresholds": {"quality": 3.0}}
    on_ray = run_judge(source, tmp_path / "ray", JudgeConfig.load(None, engine="ray", ray={"actors": 3, "batch_size": 4}, **settings))
    assert 1 <= on_ray.details["usage"]["actors"] <= 3  # one pool for the whole folder (a small input may keep one actor busy with it all)
    run_judge(source, tmp_path / "local", JudgeConfig.load(None, **settings))
    assert _tables(tmp_path / "ray") == _tables(tmp_path / "local")


def test_no_room_for_an_actor_is_one_line_not_a_silent_hang(nodes, teacher_server, tmp_path, capsys) -> None:
    config = small_run_config(teacher_server, tmp_path / "out", engine="ray", ray={"actors": 1, "num_cpus": 4, "resource_timeout": 3})
    (tmp_path / "run.json").write_text(json.dumps(config))
    started = time.monotonic()
    assert main(["generate", "--config", str(tmp_path / "run.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the CLI also shows the run's warnings (the wait, at once)
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and "no room for an actor" in errors[0] and "4 CPU" in errors[0], lines
    assert time.monotonic() - started < 90
    # reproduction: the failed run's dataset kept executing in Ray Data's thread (and our pump's) after the error
    left = [thread.name for thread in threading.enumerate() if thread.name.startswith(("StreamingExecutor-", "mediflow-ray-results"))]
    assert not left, left


def test_an_actor_that_does_not_see_the_drivers_output_folder_refuses(tmp_path) -> None:
    session = ActorSession(RunContext(coordinator=None, actors=2, folder=tmp_path / "not-shared", token="abc"))
    with pytest.raises(MediflowError, match="does not see the driver's output folder") as refused:
        session.check_folder()
    assert "\n" not in str(refused.value)


_TOKEN_HEAD = textwrap.dedent(
    """
    import os, sys
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = "t" * 32
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": sys.argv[1]})
    print(cluster.address, flush=True)
    sys.stdin.readline()
    cluster.shutdown()
    """
)


def test_a_cluster_that_wants_an_auth_token_is_one_line_naming_it_and_writes_nothing(tmp_path) -> None:
    """Reproduction: a missing Ray auth token ended after 30 s as "Failed to connect", with a failed folder left behind."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    temp = f"/tmp/mediflow-token-{os.getpid()}"  # Ray's socket paths must stay short
    head = subprocess.Popen([sys.executable, "-c", _TOKEN_HEAD, temp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = head.stdout.readline().strip()
        assert address, "the token cluster did not start"
        config = small_run_config("http://127.0.0.1:9/v1", tmp_path / "out", engine="ray", ray={"address": address})
        (tmp_path / "run.json").write_text(json.dumps(config))
        home = tmp_path / "home"
        home.mkdir()
        command = [sys.executable, "-m", "mediflow", "generate", "--config", str(tmp_path / "run.json")]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, env={**env, "HOME": str(home), "OPENAI_API_KEY": "unused"}, timeout=120)
        took = time.monotonic() - started
    finally:
        head.communicate("\n", timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "auth token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # checked before anything was written
    assert took < 20, took
