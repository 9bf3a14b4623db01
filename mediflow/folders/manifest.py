"""The typed manifest every output folder carries (``manifest.json``).

One shape for every kind of folder: what wrote it (``kind``), what its ``data/`` (or its model
files) hold (``holds``: ``records``, ``pairs``, ``task_data``, ``export``, ``model``, ``report``, or
whatever a new stage writes: the input reader goes by this, not by the kind), how far it got (``status`` and the
``reason`` when it is not ``finished``), the exact config and its fingerprint, the inputs it read
with a content fingerprint each, its counts, and, for a folder made with a teacher, what each
role's teacher negotiated with its server (``teacher_capabilities``). Stage-specific facts (a run's
plan and usage, a stage's report, curate's funnel) travel in ``details`` and are written at the top
level beside the typed keys, where the audit and the dataset card read them.

Credentials never reach the file: URLs in the config lose their user/password and secret query
parameters (:func:`redact_urls`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mediflow.errors import MediflowError
from mediflow.folders.atomic import write_json
from mediflow.redact import redact_urls
from mediflow.version import __version__

MANIFEST_NAME = "manifest.json"
STATUSES: tuple[str, ...] = ("running", "finished", "failed", "stopped")
_TYPED_KEYS = (
    "kind",
    "holds",
    "status",
    "reason",
    "mediflow_version",
    "created_at",
    "updated_at",
    "config",
    "config_fingerprint",
    "inputs",
    "counts",
    "teacher_capabilities",
)


#: What the folders of the kinds the first release wrote hold: their manifests predate ``holds``, and are still read.
_HOLDS_BEFORE_0_2: dict[str, str] = {
    **dict.fromkeys(("generate", "filter", "judge", "dedup", "decontaminate", "curate", "join"), "records"),
    **dict.fromkeys(("pit", "sft", "dpo", "merge"), "model"),
    "pairs": "pairs",
    "qa": "task_data",
    "export": "export",
    "eval": "report",
}


def now() -> str:
    """The current UTC time, as manifests write it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class InputRef:
    """One input a folder was made from: where it was, its kind, and a fingerprint of its content."""

    path: str
    kind: str
    fingerprint: str


@dataclass
class Manifest:
    """The manifest of one output folder (see the module docstring)."""

    kind: str
    config: dict[str, Any]
    config_fingerprint: str
    inputs: list[InputRef] = field(default_factory=list)
    #: What the folder holds for a reader (``records``, ``pairs``, ``model``, ...); None: nothing to read.
    holds: str | None = "records"
    status: str = "running"
    reason: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    #: ``{role: capabilities}``: what each role's teacher (by the config key of its ``teacher:`` section)
    #: learned from its server: structured-output level, dropped or renamed parameters and the refusals
    #: behind them (:func:`mediflow.teachers.negotiation.capabilities_by_role`). Written when not empty.
    teacher_capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    mediflow_version: str = __version__
    created_at: str = field(default_factory=now)
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json`` (details beside the typed keys, never over them)."""
        typed: dict[str, Any] = {
            "kind": self.kind,
            "holds": self.holds,
            "status": self.status,
            "reason": self.reason,
            "mediflow_version": self.mediflow_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "config": redact_urls(self.config),
            "config_fingerprint": self.config_fingerprint,
            "inputs": [{"path": ref.path, "kind": ref.kind, "fingerprint": ref.fingerprint} for ref in self.inputs],
            "counts": self.counts,
        }
        if self.teacher_capabilities:
            typed["teacher_capabilities"] = redact_urls(self.teacher_capabilities)
        return {**typed, **{key: value for key, value in redact_urls(self.details).items() if key not in _TYPED_KEYS}}

    @classmethod
    def from_dict(cls, value: dict[str, Any], source: Path) -> Manifest:
        """Parse a manifest read from ``source``; a manifest without the typed keys is an error naming the file."""
        missing = [key for key in ("kind", "status", "config_fingerprint") if key not in value]
        if missing:
            raise MediflowError(f"{source}: not a MediFlow folder manifest (no {', '.join(missing)})")
        if value["status"] not in STATUSES:
            raise MediflowError(f"{source}: status {value['status']!r} is not one of {', '.join(STATUSES)}")
        inputs = [InputRef(str(ref.get("path")), str(ref.get("kind")), str(ref.get("fingerprint"))) for ref in value.get("inputs") or [] if isinstance(ref, dict)]
        kind = str(value["kind"])
        holds = value["holds"] if "holds" in value else _HOLDS_BEFORE_0_2.get(kind)
        return cls(
            kind=kind,
            holds=None if holds is None else str(holds),
            config=value.get("config") or {},
            config_fingerprint=str(value["config_fingerprint"]),
            inputs=inputs,
            status=value["status"],
            reason=value.get("reason"),
            counts=value.get("counts") or {},
            teacher_capabilities=_capabilities(value.get("teacher_capabilities")),
            details={key: item for key, item in value.items() if key not in _TYPED_KEYS},
            mediflow_version=str(value.get("mediflow_version", "")),
            created_at=str(value.get("created_at", "")),
            updated_at=value.get("updated_at"),
        )

    def write(self, folder: Path) -> None:
        """Write ``folder/manifest.json`` atomically (stamping ``updated_at``)."""
        self.updated_at = now()
        write_json(Path(folder) / MANIFEST_NAME, self.to_dict())


def _capabilities(value: Any) -> dict[str, dict[str, Any]]:
    """The ``{role: capabilities}`` entries of a manifest read back (anything else in there is ignored)."""
    if not isinstance(value, dict):
        return {}
    return {str(role): entry for role, entry in value.items() if isinstance(entry, dict) and "structured_output" in entry}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": leaf}`` (lists are leaves), the layout fingerprints compare in."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two flat fingerprints, as short readable items (a content hash by its name)."""
    items = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, str) and len(before) == 64 or isinstance(after, str) and len(after) == 64:
            items.append(key)  # a content hash: the name says enough
        else:
            items.append(f"{key} {before!r} -> {after!r}")
    return items


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest in ``folder``, None when there is none; unreadable or foreign JSON is an error naming the file."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MediflowError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MediflowError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise MediflowError(f"{path}: must hold a JSON object, found {type(value).__name__}")
    return Manifest.from_dict(value, path)
