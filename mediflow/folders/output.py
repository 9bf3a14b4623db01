"""The one output-folder contract: layout, guards, lock, manifest life cycle, leftover clean-up.

Every command that writes a folder (generate, each quality stage, curate, pairs, PIT QA, export)
writes this layout (a model folder, :mod:`mediflow.folders.model`, holds a model instead of data)::

    OUT/
      manifest.json       the typed manifest (kind, status + reason, config, inputs, counts)
      data/part-00000.parquet ...   the kept records, and nothing else
      rejects.parquet     every record kept out of data/, with its stage and reason
      cache.sqlite        the engine's cache of every teacher answer (never removed: it was paid for)
      cache-segments/     Ray actors' answers until they are merged into cache.sqlite (kept like it)
      .lock               the exclusive lock, naming the process that holds it
      .tmp-*              a running (or killed) process's temporary files, removed by the next run

:meth:`OutputFolder.open` runs every guard before anything is written: the path is a folder (or
can be one), it overlaps no input, it holds nothing foreign (another kind of folder, another
config's run, files that are not ours) unless the caller passes ``overwrite``, and no other process
holds it. Rerunning the same config over the same inputs resumes (generate) or redoes the work from
the cache (the stages). A run that fails leaves ``status: failed`` and why, unless a finished
output of the same run is still in place (then that output is left exactly as it was).
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.folders.atomic import TEMP_PREFIX, remove_leftovers
from mediflow.folders.guards import LOCK_NAME, FolderLock, check_no_links, check_not_in_use, check_output
from mediflow.folders.manifest import MANIFEST_NAME, InputRef, Manifest, changes, read_manifest
from mediflow.records import canonical_json, content_id

DATA_DIR = "data"
REJECTS_NAME = "rejects.parquet"
CACHE_NAME = "cache.sqlite"
#: Ray actors' answers not yet merged into the cache (``engine.cache.segments_dir``): paid for, like the cache.
CACHE_SEGMENTS = "cache-segments"
#: Where generate keeps each committed plan range's rejects and summary until they are folded.
PARTS_DIR = ".parts"
#: Where curate keeps each stage's own folder.
STAGES_DIR = "stages"
#: Where ``datasets`` keeps its Arrow copy when a folder is loaded as a Dataset (derived, removable).
DATASETS_CACHE = ".datasets-cache"
#: Where batch mode keeps its input files and the state of its batches (:mod:`mediflow.batch.state`).
BATCHES_DIR = "batches"
#: Entries of a folder that belong to the contract (anything else there is foreign).
OWN_ENTRIES = frozenset({DATA_DIR, REJECTS_NAME, MANIFEST_NAME, CACHE_NAME, f"{CACHE_NAME}-wal", f"{CACHE_NAME}-shm", CACHE_SEGMENTS, LOCK_NAME, PARTS_DIR, STAGES_DIR, DATASETS_CACHE, BATCHES_DIR})


def shard_name(index: int) -> str:
    """The one shard naming scheme: ``part-00000.parquet``."""
    return f"part-{index:05d}.parquet"


#: Config keys that change how fast, how visibly or through which server a run goes, never what it
#: produces (cache keys name the teacher, not its address): a rerun that changes only these is the
#: same run and resumes.
RUNTIME_KEYS = frozenset(
    {
        "concurrency",
        "progress",
        "rpm",
        "tpm",
        "request_timeout",
        "max_retries",
        "adaptive",
        "error_rate_threshold",
        "records_in_flight",
        "api_key",
        "api_key_env",
        "base_url",
        "judge_base_url",
        "mode",
        "batch",
    }
)


def _without_runtime(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_runtime(item) for key, item in value.items() if key not in RUNTIME_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_runtime(item) for item in value]
    return value


def config_fingerprint(config: Any) -> str:
    """A fingerprint of what a config makes (its plain form without :data:`RUNTIME_KEYS`)."""
    return content_id(canonical_json(_without_runtime(config)))


class OutputFolder:
    """One output folder, opened for writing by one process (see the module docstring)."""

    def __init__(self, root: Path, manifest: Manifest, previous: Manifest | None, on_disk: Manifest | None, lock: FolderLock, *, staged: bool) -> None:
        self.root = root
        self.manifest = manifest
        self.previous = previous
        self._lock = lock
        # a staged run leaves a finished output in place until it publishes (and on failure)
        self._keeps_finished = staged and on_disk is not None and on_disk.status == "finished"
        self._published = False

    # -- layout -----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / DATA_DIR

    @property
    def rejects_path(self) -> Path:
        return self.root / REJECTS_NAME

    @property
    def cache_path(self) -> Path:
        return self.root / CACHE_NAME

    @property
    def parts_dir(self) -> Path:
        return self.root / PARTS_DIR

    def shard_path(self, index: int) -> Path:
        return self.data_dir / shard_name(index)

    def shards(self) -> list[Path]:
        """The committed shards, in order."""
        return sorted(p for p in self.data_dir.glob("part-*.parquet") if p.is_file())

    @property
    def resumed(self) -> bool:
        """Whether the folder already held this same run (same kind, config and inputs)."""
        return self.previous is not None

    # -- life cycle -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        kind: str,
        config: dict[str, Any],
        holds: str | None = "records",
        inputs: Sequence[InputRef] = (),
        input_paths: Iterable[Path] = (),
        overwrite: bool = False,
        fingerprint: str | None = None,
        staged: bool = True,
        extra_entries: Iterable[str] = (),
        caches: Iterable[str] = (),
        details: dict[str, Any] | None = None,
    ) -> OutputFolder:
        """Check, lock and prepare ``root`` for a run of ``kind``; see the module docstring.

        ``holds`` is what the folder will hold for a reader (``records`` by default; ``pairs``,
        ``task_data``, ``export``, ``model``, ``report``, None for nothing readable): the manifest
        records it and :func:`~mediflow.folders.open_input` goes by it, so a new kind of stage needs
        no registration anywhere.
        ``inputs`` are the inputs read (with fingerprints, for the manifest and the same-run check);
        ``input_paths`` are further paths the output must not overlap (evaluation sets, taxonomy).
        ``fingerprint`` identifies the config (default: :func:`config_fingerprint` of ``config``).
        ``staged``: the run publishes its data at the end, so a finished output of the same run
        stays untouched until then (every stage); generate commits shards as it goes (``False``), and a
        model folder says ``running`` before it touches its model (``False``).
        ``extra_entries``: further names (or glob patterns, ``checkpoint-*``) that belong to this kind of
        folder; ``caches``: those of them that hold paid-for work and survive ``overwrite`` like
        ``cache.sqlite`` (the merge preset's scores and chosen SLERPs).
        ``details["fingerprint"]``: the flat mapping ``fingerprint`` hashes (a model folder's inputs
        and settings); when present on both sides, a refusal names what changed.
        """
        root = Path(root)
        manifest = Manifest(
            kind=kind,
            holds=holds,
            config=config,
            config_fingerprint=fingerprint or config_fingerprint(config),
            inputs=list(inputs),
            details=dict(details or {}),
        )
        own = OWN_ENTRIES | set(extra_entries) | set(caches)
        kept = _CACHES | set(caches)
        _check(root, manifest, own, kept, list(input_paths), overwrite)  # read-only: refuse before writing
        try:
            root.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise MediflowError(f"{root}: cannot create the output folder (permission denied or read-only file system)") from None
        lock = FolderLock(root)
        lock.acquire()
        try:
            on_disk = _check_contents(root, manifest, own, kept, overwrite)  # again, now that nobody else can change it
            previous = None if overwrite else on_disk
            remove_leftovers(root)
            if previous is None:
                _clear(root, own, kept, keep_published=staged)
            folder = cls(root, manifest, previous, on_disk, lock, staged=staged)
            if previous is not None:
                manifest.created_at = previous.created_at
            if not folder._keeps_finished:
                manifest.write(root)
        except BaseException:
            lock.release()
            raise
        return folder

    @classmethod
    def check(
        cls,
        root: str | Path,
        *,
        kind: str,
        config: dict[str, Any],
        inputs: Sequence[InputRef] = (),
        input_paths: Iterable[Path] = (),
        overwrite: bool = False,
        fingerprint: str | None = None,
        extra_entries: Iterable[str] = (),
        caches: Iterable[str] = (),
    ) -> None:
        """Every guard of :meth:`open`, writing nothing: a caller about to do something slow or remote
        first (``generate`` asks the teacher's server) learns now that the folder would be refused."""
        manifest = Manifest(kind=kind, config=config, config_fingerprint=fingerprint or config_fingerprint(config), inputs=list(inputs))
        _check(Path(root), manifest, OWN_ENTRIES | set(extra_entries) | set(caches), _CACHES | set(caches), list(input_paths), overwrite)

    def finish(self, counts: dict[str, Any], details: dict[str, Any] | None = None, *, status: str = "finished", reason: str | None = None) -> None:
        """Write the final manifest (the last file a run writes) and release the folder."""
        self.manifest.status, self.manifest.reason = status, reason
        self.manifest.counts = counts
        self.manifest.details.update(details or {})
        self.manifest.write(self.root)
        self._published = True
        self.close()

    def fail(self, reason: str, *, status: str = "failed") -> None:
        """Record why the run ended early, unless a finished output of the same run is still in place."""
        try:
            if not self._keeps_finished:
                self.manifest.status, self.manifest.reason = status, reason
                self.manifest.write(self.root)
        except OSError:
            pass  # a full or read-only disk: the error that got us here is what the user sees
        finally:
            self.close()

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or self._published:
            self.close()
        elif isinstance(exc, KeyboardInterrupt):
            self.fail("interrupted", status="stopped")
        else:
            self.fail(str(exc) or type(exc).__name__)


#: What survives ``overwrite`` and a fresh start: paid-for answers (and the batches that bring them), and the lock itself.
_CACHES = frozenset({CACHE_NAME, f"{CACHE_NAME}-wal", f"{CACHE_NAME}-shm", CACHE_SEGMENTS, BATCHES_DIR})


def _is_own(name: str, own: Iterable[str]) -> bool:
    """Whether an entry named ``name`` belongs to the contract (``own`` holds names and glob patterns)."""
    return any(name == entry or ("*" in entry and fnmatch.fnmatchcase(name, entry)) for entry in own)


def _check(root: Path, manifest: Manifest, own: frozenset[str] | set[str], kept: frozenset[str] | set[str], input_paths: list[Path], overwrite: bool) -> None:
    """The guards that need no lock: the one output guard (a folder path, no overlap with any input or the
    config file, not inside another run's folder, writable), nothing foreign in it, no link among its files."""
    check_output(root, [Path(ref.path) for ref in manifest.inputs] + input_paths)
    check_not_in_use(root)  # said first: what the folder holds is changing under the other process
    _check_contents(root, manifest, own, kept, overwrite)


def _check_contents(root: Path, manifest: Manifest, own: frozenset[str] | set[str], kept: frozenset[str] | set[str], overwrite: bool) -> Manifest | None:
    """The manifest in ``root`` (None when there is none) once its contents are known to be this run's, or ``overwrite``.

    Refuses, unless ``overwrite``: files that are not the contract's, another kind of folder, another
    config's run, or the same config over other inputs. Refuses always: a symbolic link among the
    contract's files (a rerun or ``--overwrite`` would write through it).
    """
    if not root.is_dir():
        return None
    check_no_links(root, lambda name: _is_own(name, own))
    foreign = sorted(p.name for p in root.iterdir() if not _is_own(p.name, own) and not p.name.startswith(TEMP_PREFIX))
    hint = "choose another folder, or pass --overwrite to replace it"
    try:
        previous = read_manifest(root)
    except MediflowError as exc:
        if overwrite:
            return None
        raise MediflowError(f"{root}: holds an unreadable manifest ({exc}); {hint}") from None
    if previous is not None and previous.kind != manifest.kind and not overwrite:  # said first: it explains the other files
        raise MediflowError(f"{root}: holds a '{previous.kind}' folder, not a '{manifest.kind}' one; {hint}")
    if foreign and not overwrite:
        raise MediflowError(f"{root}: holds files that are not a MediFlow {manifest.kind} output ({', '.join(foreign[:3])}); {hint}")
    if previous is None:
        stray = [p.name for p in (root / DATA_DIR).glob("*")] if (root / DATA_DIR).is_dir() else []
        stray += [p.name for p in root.iterdir() if p.name not in kept | {LOCK_NAME, DATA_DIR} and not p.name.startswith(TEMP_PREFIX)]
        if stray and not overwrite:
            where = "data/ files" if (root / DATA_DIR).is_dir() and any((root / DATA_DIR).iterdir()) else f"{', '.join(sorted(stray)[:3])}"
            raise MediflowError(f"{root}: holds {where} but no manifest.json; {hint}")
        return None
    if overwrite:
        return previous
    if previous.kind != manifest.kind:
        raise MediflowError(f"{root}: holds a '{previous.kind}' folder, not a '{manifest.kind}' one; {hint}")
    if previous.config_fingerprint != manifest.config_fingerprint:
        raise MediflowError(f"{root}: holds a {manifest.kind} run of another config{_what_changed(previous, manifest)}; {hint}")
    if _content(previous.inputs) != _content(manifest.inputs):
        raise MediflowError(f"{root}: holds a {manifest.kind} run of other input data ({_inputs_changed(previous.inputs, manifest.inputs)}); {hint}")
    return previous


def _content(inputs: Sequence[InputRef]) -> list[tuple[str, str]]:
    """What makes inputs the same: their kinds and content fingerprints, not where they are (the same rows
    in another file, a byte-identical model at another path, are the same input)."""
    return [(ref.kind, ref.fingerprint or ref.path) for ref in inputs]


def _inputs_changed(before: Sequence[InputRef], after: Sequence[InputRef]) -> str:
    """Which inputs differ in content, by name (``changed: sft /data/b.parquet (was /data/a.parquet)``)."""
    if len(before) != len(after):
        return f"{len(before)} inputs before, {len(after)} now: was {', '.join(r.path for r in before) or 'no input'}"
    changed = [f"{new.kind} {new.path}" + (f" (was {old.path})" if old.path != new.path else "") for old, new in zip(before, after) if (old.kind, old.fingerprint or old.path) != (new.kind, new.fingerprint or new.path)]
    return "changed: " + ", ".join(changed)


def _what_changed(previous: Manifest, manifest: Manifest) -> str:
    """`` (changed: train.learning_rate 0.001 -> 0.005)`` when both manifests carry their flat fingerprint."""
    old, new = previous.details.get("fingerprint"), manifest.details.get("fingerprint")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    changed = changes(old, new)
    return " (changed: " + ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "") + ")" if changed else ""


def _clear(root: Path, own: frozenset[str] | set[str], kept: frozenset[str] | set[str], *, keep_published: bool) -> None:
    """Remove the contract's files of an earlier run (never a cache, the lock or foreign files).

    ``keep_published``: leave the data, rejects, manifest and card in place (a staged run replaces
    them when it publishes, so a failure leaves them as they were).
    """
    kept = set(kept) | {LOCK_NAME}
    if keep_published:
        kept |= {DATA_DIR, REJECTS_NAME, MANIFEST_NAME, "README.md"}
    for path in sorted(p for p in root.iterdir() if _is_own(p.name, own) and p.name not in kept):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
