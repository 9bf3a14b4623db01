"""`generate --shard K/N` and `mediflow join`: the joined shares are exactly one unsharded run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixtures import small_run_config

from mediflow import generate
from mediflow.cli import main
from mediflow.errors import ConfigError
from mediflow.pipeline.share import Share


def _config(base_url: str, out: Path, **extra) -> dict:
    # 4 documents per instruction: shares must never split a group (its instruction would be paid twice).
    return small_run_config(base_url, out, per_cell=3, documents_per_instruction=2, limits={"concurrency": 8}, output={"dir": str(out), "shard_size": 4}, **extra)


def _folder(out: Path) -> dict:
    """Everything a run folder holds except created_at (a run's start time): records, rejects, counts."""
    records = pq.read_table(sorted(str(p) for p in (out / "data").glob("part-*.parquet"))).drop(["created_at"])
    rejects = pq.read_table(out / "rejects.parquet").drop(["created_at"])
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "shards": sorted(p.name for p in (out / "data").glob("*.parquet")),
        "records": records.to_pylist(),
        "rejects": rejects.to_pylist(),
        "counts": manifest["counts"],
        "usage": manifest["usage"],
        "fingerprint": manifest["config_fingerprint"],
        "teacher_capabilities": manifest["teacher_capabilities"],  # the shares' negotiations, combined
    }


def test_three_shares_joined_equal_one_run(teacher_server, tmp_path) -> None:
    whole = tmp_path / "whole"
    generate(_config(teacher_server, whole))
    unsharded_requests = teacher_server.stats()["requests"]
    teacher_server.reset()
    shares = [tmp_path / f"share-{k}" for k in (1, 2, 3)]
    sizes = []
    for k, folder in enumerate(shares, start=1):
        sizes.append(len(generate(_config(teacher_server, folder, shard=f"{k}/3"))))
    assert teacher_server.stats()["requests"] == unsharded_requests  # no instruction written twice, nothing re-asked
    assert all(sizes) and sum(sizes) == len(generate(_config(teacher_server, whole)))

    joined = tmp_path / "joined"
    assert main(["join", str(joined), *map(str, reversed(shares))]) == 0
    assert _folder(joined) == _folder(whole)
    created = set(pq.read_table(joined / "data").column("created_at").to_pylist())
    assert len(created) == 1  # one run, one start

    served = teacher_server.stats()["requests"]
    generate(_config(teacher_server, joined))  # the unsharded command finds the joined folder finished
    assert teacher_server.stats()["requests"] == served


def test_join_refuses_incomplete_or_mixed_shares(teacher_server, tmp_path, capsys) -> None:
    one, two = tmp_path / "s1", tmp_path / "s2"
    generate(_config(teacher_server, one, shard="1/2"))
    generate(_config(teacher_server, two, shard="2/2", seed=7))
    assert main(["join", str(tmp_path / "j1"), str(one)]) == 2
    assert "share(s) 2/2 missing" in capsys.readouterr().err
    assert main(["join", str(tmp_path / "j2"), str(one), str(two)]) == 2
    assert "share of another run" in capsys.readouterr().err
    assert main(["join", str(tmp_path / "j3"), str(one), str(one)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["join", str(one / "inside"), str(one)]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert not (tmp_path / "j1").exists() and not (tmp_path / "j2").exists()


@pytest.mark.parametrize("spec", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_bad_share_specs_are_one_line_errors(spec) -> None:
    with pytest.raises(ConfigError, match="shard"):
        Share.parse(spec)


def test_shares_partition_the_groups() -> None:
    keys = [f"group-{i}" for i in range(300)]
    owners = [[k for k in range(1, 5) if Share(k, 4).holds(key)] for key in keys]
    assert all(len(owner) == 1 for owner in owners)
    assert min(sum(o == [k] for o in owners) for k in range(1, 5)) > 50  # roughly even


def test_an_unreachable_ray_address_is_one_error_before_anything_is_written(tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "run"
    args = ["generate", "--teacher", "openai:mediflow-test-teacher", "--base-url", "http://127.0.0.1:9/v1", "--out", str(out)]
    assert main([*args, "--engine", "ray", "--ray-address", "127.0.0.1:9"]) == 2
    assert "ray.address: nothing answers at 127.0.0.1:9" in capsys.readouterr().err
    assert main([*args, "--engine", "ray", "--ray-address", "no-port"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert not out.exists()
