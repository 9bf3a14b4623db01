"""``mediflow join OUT SHARD_DIR...``: the N shares of a ``generate --shard K/N`` job, as one run's output folder.

Each share kept its items' full-plan positions, so its ``data/part-i`` holds its part of plan range
``i`` and its summary lists the positions of those rows. Joining interleaves the shares' parts of
every range by position: ``OUT`` then holds the records and rejects of the unsharded run, in its
order, under its fingerprint (rerunning the unsharded ``generate`` into ``OUT`` finds nothing to
do). ``created_at`` becomes the earliest share's start, as a single run's records carry its start.
The shares' teacher caches are merged into ``OUT/cache.sqlite``.

Nothing is written before every input is checked: all N shares of one job, each finished, and
``OUT`` a folder the contract lets us write (:class:`~mediflow.folders.OutputFolder`: no overlap
with a share, nothing foreign in it, not locked by another process).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mediflow.engine.cache import merge_caches
from mediflow.errors import MediflowError
from mediflow.folders import OutputFolder, check_no_overlap, read_manifest
from mediflow.pipeline.collect import shard_summary
from mediflow.pipeline.output import RunOutput, interleave_range
from mediflow.pipeline.run import RunSummary, finish_run
from mediflow.teachers.negotiation import capabilities_by_role


def _share_manifest(folder: Path) -> dict[str, Any]:
    """A share's manifest as a dict (typed keys and details side by side)."""
    if not folder.is_dir():
        raise MediflowError(f"join: {folder} is not a folder")
    manifest = read_manifest(folder)
    if manifest is None or manifest.kind != "generate":
        raise MediflowError(f"join: {folder} is not a generate output folder (no generate manifest.json)")
    if "shard" not in manifest.details:
        raise MediflowError(f"join: {folder} is not a share of a sharded run (made without generate --shard K/N)")
    if manifest.status != "finished":
        raise MediflowError(f"join: {folder} is {manifest.status}: rerun its generate command to finish it first")
    return manifest.to_dict()


def check_shares(out: Path, folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The shares' manifests, once they are known to be all N finished shares of one job and ``out`` is free."""
    if not folders:
        raise MediflowError("join: no share folder given")
    check_no_overlap(out, folders)
    manifests = [_share_manifest(folder) for folder in folders]
    first = manifests[0]["shard"]
    count = int(first["share"].split("/")[1])
    seen: dict[str, Path] = {}
    for folder, manifest in zip(folders, manifests):
        share = manifest["shard"]
        if share["unsharded_fingerprint"] != first["unsharded_fingerprint"]:
            raise MediflowError(f"join: {folder} is a share of another run than {folders[0]} (different config, teacher or prompts)")
        if share["share"] in seen:
            raise MediflowError(f"join: share {share['share']} given twice ({seen[share['share']]} and {folder})")
        seen[share["share"]] = folder
    missing = [f"{k}/{count}" for k in range(1, count + 1) if f"{k}/{count}" not in seen]
    if missing:
        raise MediflowError(f"join: share(s) {', '.join(missing)} missing: a join needs all {count} shares")
    return manifests


def join_shares(out: str | Path, folders: Sequence[str | Path]) -> RunSummary:
    """Join the shares in ``folders`` into ``out`` (see the module docstring)."""
    out, paths = Path(out), [Path(folder) for folder in folders]
    manifests = check_shares(out, paths)
    started_at = min(datetime.fromisoformat(manifest["created_at"]) for manifest in manifests)
    config, details = _joined_manifest(manifests, paths, out)
    folder = OutputFolder.open(out, kind="generate", config=config, fingerprint=manifests[0]["shard"]["unsharded_fingerprint"], input_paths=paths, staged=False, details=details)
    with folder:
        folder.manifest.created_at = started_at.isoformat()
        # each share negotiated with the server for itself: its answers are all in the joined run
        folder.manifest.teacher_capabilities = capabilities_by_role({}, [manifest.get("teacher_capabilities") or {} for manifest in manifests])
        output = RunOutput(folder.root, folder)
        shares = [RunOutput(path) for path in paths]
        ranges = sorted({index for share in shares for index, _ in share.shards()})
        for index in ranges:
            rows, rejects, positions = interleave_range(shares, index, started_at)
            output.write_shard(index, rows, rejects, shard_summary(index, rows, rejects, positions))
        merge_caches(output.cache_path, [share.cache_path for share in shares])  # each share's teacher answers: the joined run reruns and extends for free
        return finish_run(output, "finished", None, {"shares": len(paths)})


def _joined_manifest(manifests: Sequence[dict[str, Any]], folders: Sequence[Path], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The joined run's config and manifest details: the unsharded run's."""
    first = manifests[0]
    typed = ("kind", "status", "reason", "mediflow_version", "created_at", "updated_at", "config", "config_fingerprint", "inputs", "counts", "teacher_capabilities")
    manifest = {key: value for key, value in first.items() if key not in ("shard", "usage", "session", "failures", "finished_at", *typed)}
    config = {**first["config"], "shard": None, "output": {**first["config"]["output"], "dir": str(out)}}
    manifest["plan"] = {
        **first["plan"],
        "items": first["shard"]["unsharded_items"],
        "instruction_groups": sum(m["plan"]["instruction_groups"] for m in manifests),
    }
    manifest["joined_from"] = [{"share": m["shard"]["share"], "folder": str(folder)} for m, folder in zip(manifests, folders)]
    return config, manifest
