"""A real third-party server: llama-cpp-python's OpenAI-compatible server, serving the Gemma-3-270M GGUF.

That server takes ``response_format`` ``text`` and ``json_object`` only and answers ``json_schema``
with HTTP 500; ``generate`` must negotiate down once (to JSON mode with the schema, which it turns
into a grammar) instead of retrying every JSON request until the breaker stops the run. The model is
a 270M base model, so rejects with reasons are fine; what is checked is the run, not the prose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from fixtures import small_run_config

from mediflow.cli import main
from mediflow.taxonomy import load_taxonomy
from mediflow.teachers.local_llama import _assemble_weights
from mediflow.testing.server_process import free_port, stop_process

pytestmark = pytest.mark.slow

ALIAS = "gemma-3-270m"
_STARTUP_TIMEOUT = 180.0
#: ``python -m llama_cpp.server`` with the weights in plain CPU buffers: llama.cpp's AMX kernels
#: crash the server at its first decode in sandboxes such as CI (see ``without_extra_buffer_types``).
_SERVER_WITH_PLAIN_BUFFERS = (
    "import runpy, sys; from mediflow.teachers.local_llama import without_extra_buffer_types\nwith without_extra_buffer_types(): sys.argv[0] = 'llama_cpp.server'; runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` (plain CPU buffers) on a free loopback port; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    command = [
        sys.executable, "-c", _SERVER_WITH_PLAIN_BUFFERS, "--model", str(_assemble_weights()), "--model_alias", ALIAS,
        "--n_ctx", "2048", "--n_threads", "2", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        stop_process(process, grace=20)


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise RuntimeError(f"llama_cpp.server did not start within {_STARTUP_TIMEOUT:.0f}s: {log_path.read_text()[-2000:]}")


def _json_run_config(out: Path) -> dict:
    """One JSON record (json_share 1), small max_tokens: about a minute on a loaded 2-core machine."""
    config = small_run_config(None, out, document_types=1, per_cell=1, json_share=1.0)
    config["tasks"] = config["tasks"][:1]
    config["limits"] = {"concurrency": 1, "max_retries": 0, "request_timeout": 300}
    config["sampling"] = {"document": {"max_tokens": 48}, "instruction": {"max_tokens": 40}, "response": {"max_tokens": 96}}
    config["max_corrections"] = 0  # three requests; an invalid answer is a reasoned reject
    return config


def test_generate_json_records_through_llama_cpp_server(llama_cpp_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "json.yaml"
    out = tmp_path / "run"
    config_path.write_text(yaml.safe_dump(_json_run_config(out)))

    # A model name the server does not serve: one line, before any paid request, nothing written.
    assert main(["generate", "--config", str(config_path), "--teacher", "openai:gpt-4o-mini", "--base-url", llama_cpp_server]) == 2
    assert capsys.readouterr().err == (f"error: teacher at {llama_cpp_server} does not serve model 'gpt-4o-mini'; it serves '{ALIAS}'\n")
    assert not out.exists()

    assert main(["generate", "--config", str(config_path), "--teacher", f"openai:{ALIAS}", "--base-url", llama_cpp_server]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["counts"]["records"] + manifest["counts"]["rejects"] == manifest["plan"]["items"] >= 1
    assert "server_error" not in manifest["session"]["errors"]  # no HTTP 500 retry storm
    capabilities = manifest["teacher_capabilities"]["teacher"]
    assert capabilities["models_check"] == "served"
    assert capabilities["structured_output"] == "json_object_schema"
    assert capabilities["refusals"]["json_schema"].startswith("HTTP 500: ")
    assert "response_format" in capabilities["refusals"]["json_schema"]

    taxonomy = load_taxonomy()
    for path in (out / "data").glob("part-*.parquet"):
        for row in pq.read_table(path).to_pylist():
            assert row["output_format"] == "json"
            jsonschema.validate(json.loads(row["output"]), taxonomy.tasks[row["task_type"]].output_schema)
    if manifest["counts"]["rejects"]:
        assert all(reject["reason"] for reject in pq.read_table(out / "rejects.parquet").to_pylist())
