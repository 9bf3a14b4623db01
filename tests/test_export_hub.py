"""The Hub upload path, through the real ``huggingface_hub`` client, against a local fake Hub.

The fake implements just the endpoints an upload touches (create repo, list tree, validate YAML,
preupload, commit) on 127.0.0.1 and records every commit's file list, so the tests check what
would reach the Hub: bounded commits, data before the card, unchanged files skipped on a rerun
(both for LFS files, compared by SHA-256, and regular ones, compared by git blob id), and the
token sent as a header and written nowhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
from fixtures import make_records, write_output_folder
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils.sha import git_hash

from mediflow.cli import main
from mediflow.export import ExportConfig, export_dataset, upload_export

TOKEN = "hf_test_token_do_not_write"


class FakeHub:
    """State of the fake Hub: repos -> {path: bytes}, and every commit's paths."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.commits: list[list[str]] = []
        self.auth_headers: set[str] = set()
        #: Commit attempts (1-based) the fake refuses with a 500, as a Hub outage mid-upload would.
        self.fail_commits: set[int] = set()
        self.commit_attempts = 0


#: What an export folder keeps locally and never uploads (the folder contract's manifest and lock).
LOCAL_ONLY = {"manifest.json", ".lock"}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802
            hub.auth_headers.add(self.headers.get("Authorization", ""))
            match = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/?]+)", self.path)
            if not match:
                return self._reply(404, {"error": "not found"})
            files = hub.repos.get(match.group(1))
            if files is None:
                return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            entries = []
            for path, content in sorted(files.items()):
                entry: dict[str, Any] = {"type": "file", "path": path, "size": len(content), "oid": git_hash(content)}
                if path.endswith(".parquet"):  # the Hub stores data files in LFS
                    entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 130}
                entries.append(entry)
            self._reply(200, entries)

        def do_POST(self) -> None:  # noqa: N802
            hub.auth_headers.add(self.headers.get("Authorization", ""))
            body = self._body()
            if self.path == "/api/repos/create":
                payload = json.loads(body)
                repo = f"{payload['organization']}/{payload['name']}"
                url = f"http://{self.headers['Host']}/datasets/{repo}"
                if repo in hub.repos:  # the Hub answers 409 with the repo's url
                    return self._reply(409, {"error": "You already created this dataset repo", "url": url})
                hub.repos[repo] = {}
                hub.private[repo] = payload.get("visibility") == "private" or bool(payload.get("private"))
                return self._reply(200, {"url": url})
            if self.path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            match = re.match(r"^/api/datasets/([^/]+/[^/]+)/(preupload|commit)/", self.path)
            if not match or match.group(1) not in hub.repos:
                return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            repo = match.group(1)
            if match.group(2) == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            hub.commit_attempts += 1
            if hub.commit_attempts in hub.fail_commits:
                return self._reply(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
            paths = []
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    hub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    paths.append(item["value"]["path"])
            hub.commits.append(paths)
            self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/{repo}/commit/{len(hub.commits):040x}", "commitOid": f"{len(hub.commits):040x}", "pullRequestUrl": None})

    return Handler


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeHub]]:
    # Other test modules load models with HF_HUB_OFFLINE=1, which huggingface_hub reads once into
    # a constant; the upload must reach the loopback fake Hub regardless.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def export_dir(tmp_path: Path) -> Path:
    records = write_output_folder(tmp_path / "records", make_records(documents=30))
    out = tmp_path / "export"
    export_dataset(records, out, ExportConfig(max_shard_rows=6, task_configs=False))
    return out


def test_upload_commits_in_bounded_batches_and_resumes(fake_hub, export_dir: Path) -> None:
    endpoint, hub = fake_hub
    files = sorted(str(p.relative_to(export_dir)) for p in export_dir.rglob("*") if p.is_file() and p.name not in LOCAL_ONLY)
    report = upload_export(export_dir, "someone/mediflow-demo", token=TOKEN, private=True, files_per_commit=4, endpoint=endpoint)

    assert hub.commits == report.commits
    assert all(1 <= len(commit) <= 4 for commit in hub.commits)
    assert sorted(p for commit in hub.commits for p in commit) == files
    assert hub.commits[-1][-1] == "README.md", "the card goes last, after the data it describes"
    assert hub.private["someone/mediflow-demo"] is True
    stored = hub.repos["someone/mediflow-demo"]
    assert all(stored[path] == (export_dir / path).read_bytes() for path in files)

    # A rerun sends nothing; a changed card is the only file sent after an edit.
    again = upload_export(export_dir, "someone/mediflow-demo", token=TOKEN, files_per_commit=4, endpoint=endpoint)
    assert again.commits == [] and sorted(again.skipped) == files
    (export_dir / "README.md").write_text((export_dir / "README.md").read_text() + "\nEdited.\n")
    edited = upload_export(export_dir, "someone/mediflow-demo", token=TOKEN, files_per_commit=4, endpoint=endpoint)
    assert edited.commits == [["README.md"]]

    assert hub.auth_headers == {f"Bearer {TOKEN}"}
    assert not any(TOKEN.encode() in p.read_bytes() for p in export_dir.rglob("*") if p.is_file())


def test_an_interrupted_upload_resumes_with_the_files_not_yet_committed(fake_hub, export_dir: Path) -> None:
    """The Hub fails the second commit: the first batch stays on the Hub and a rerun sends only the rest."""
    endpoint, hub = fake_hub
    files = sorted(str(p.relative_to(export_dir)) for p in export_dir.rglob("*") if p.is_file() and p.name not in LOCAL_ONLY)
    hub.fail_commits = {2}
    with pytest.raises(HfHubHTTPError):
        upload_export(export_dir, "someone/resume", token=TOKEN, files_per_commit=3, endpoint=endpoint)
    first_batch = hub.commits[0]
    assert len(hub.commits) == 1 and len(first_batch) == 3 and "README.md" not in hub.repos["someone/resume"]

    resumed = upload_export(export_dir, "someone/resume", token=TOKEN, files_per_commit=3, endpoint=endpoint)
    assert sorted(resumed.skipped) == sorted(first_batch)
    assert hub.commits[1:] == resumed.commits and all(len(c) <= 3 for c in resumed.commits)
    assert sorted(p for c in resumed.commits for p in c) == sorted(set(files) - set(first_batch))
    assert resumed.commits[-1][-1] == "README.md"
    assert sorted(hub.repos["someone/resume"]) == files


def test_cli_upload_reads_the_token_from_the_environment(fake_hub, tmp_path: Path, monkeypatch, capsys) -> None:
    endpoint, hub = fake_hub
    records = write_output_folder(tmp_path / "records", make_records(documents=12))
    argv = ["export", str(records), "--to-hub", "someone/cli-demo", "--endpoint", endpoint, "--files-per-commit", "3", "--token-env", "MY_HF_TOKEN"]
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    assert main(argv) == 2
    assert "MY_HF_TOKEN" in capsys.readouterr().err

    monkeypatch.setenv("MY_HF_TOKEN", TOKEN)
    assert main(argv) == 0
    assert "unchanged file(s) skipped" in capsys.readouterr().out
    assert "README.md" in hub.repos["someone/cli-demo"]
    assert all(len(commit) <= 3 for commit in hub.commits)
    # The export is deterministic: re-exporting and uploading again finds every file unchanged.
    commits_before = len(hub.commits)
    assert main(argv) == 0
    assert len(hub.commits) == commits_before
