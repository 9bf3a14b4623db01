"""The cache survives SIGKILL: a killed run, rerun, re-requests nothing it had been answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from mediflow.testing import TeacherServerURL
from mediflow.testing.teacher import request_key

N_PROMPTS = 200
CONCURRENCY = 4

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from mediflow.engine import Engine, LimitsConfig
    from mediflow.teachers import ChatRequest, make_teacher

    async def main(url, cache, n, concurrency):
        teacher = make_teacher("openai:test-teacher", base_url=url)
        config = LimitsConfig(concurrency=concurrency)
        async with Engine(teacher, Path(cache), config, progress=False) as engine:
            async def one(i):
                await engine.complete(ChatRequest(messages=(("user", f"prompt {i}"),), max_tokens=64))
                print(i, flush=True)  # printed only once the answer is in the cache
            await asyncio.gather(*(one(i) for i in range(n)))
        await teacher.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    """
)


def server_key(i: int) -> str:
    """The test server's key for prompt ``i`` as the openai client sends it."""
    body = {"messages": [{"role": "user", "content": f"prompt {i}"}], "temperature": 0.7, "top_p": 1.0, "max_tokens": 64}
    return request_key(body)


def test_sigkill_mid_run_then_rerun_repeats_no_answered_request(teacher_server: TeacherServerURL, tmp_path: Path) -> None:
    teacher_server.control(latency=0.03)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, str(script), teacher_server, str(tmp_path / "cache.sqlite"), str(N_PROMPTS), str(CONCURRENCY)]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    answered = set()
    while len(answered) < 40:
        line = process.stdout.readline()
        assert line, "worker ended before it could be killed"
        answered.add(int(line))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    assert len(answered) < N_PROMPTS

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert {int(line) for line in rerun.stdout.split()} == set(range(N_PROMPTS))

    by_key = teacher_server.stats()["by_key"]
    assert all(by_key[server_key(i)] == 1 for i in answered)
    assert set(by_key) == {server_key(i) for i in range(N_PROMPTS)}
    # At most the requests in flight at the kill were sent twice.
    assert sum(by_key.values()) <= N_PROMPTS + CONCURRENCY
