"""Generation throughput: the bare ``openai`` client (our ceiling) against the engine and ``mediflow generate``.

For each latency, one test teacher server is started (its own process, loopback, fixed latency)
and every path sends N chat completions to it with at most C in flight:

- ``bare openai (httpx)``    ``AsyncOpenAI`` with its default httpx transport (pool sized to C) and
                             an ``asyncio.Semaphore(C)`` loop: what a user would write by hand;
- ``bare openai (aiohttp)``  the same, on the aiohttp transport mediflow uses;
- ``engine``                 ``Engine.complete`` over N distinct requests: cache on (a fresh SQLite
                             file), limits, retries, progress bar, accounting;
- ``generate (in-process)``  ``run_async`` of a run config: plan, prompts, ICD-10-CM seed facts,
                             document -> instruction -> response, JSON validation, shards, manifest;
                             timed from the start of the run (interpreter start-up and the
                             once-per-process ICD-10-CM table load are outside the timing);
- ``mediflow generate CLI``  the same config through the command line, timed wall clock from process
                             start to exit (so it includes Python start-up and imports).

The ceiling is the faster bare client; ``vs bare`` is each path's req/s over it. CPU is measured
per process (``getrusage`` for ours, ``/proc/<pid>/stat`` for the server), so the table shows what
each request costs the library and what it costs the server, which shares the same cores and caps
the zero-latency figure. Each path runs in a fresh child process with a fresh cache directory,
against a server whose counters were reset; the server's own request counter is the request count.

    flock /tmp/mediflow-bench.lock python benchmarks/throughput.py --requests 3000 --concurrency 256 --latency 0 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mediflow.testing import TeacherServerURL, teacher_server

PATHS = ("bare-httpx", "bare-aiohttp", "engine", "generate", "cli")
LABELS = {
    "bare-httpx": "bare openai (httpx)",
    "bare-aiohttp": "bare openai (aiohttp)",
    "engine": "engine",
    "generate": "generate (in-process)",
    "cli": "mediflow generate CLI",
}
_SYSTEM = "You are a clinical documentation assistant. Write a concise, realistic progress note. " * 3
_MAX_TOKENS = 512


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux ``/proc``); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _user_prompt(i: int) -> str:
    return f"Patient {i}: follow-up for hypertension and type 2 diabetes; write today's note. " * 2


# --- the paths, each run in its own child process -------------------------------------------------


async def _bare(url: str, n: int, concurrency: int, transport: str) -> None:
    prompts = [[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _user_prompt(i)}] for i in range(n)]
    await bare_client(url, prompts, concurrency, transport)


async def bare_client(url: str, prompts: list[list[dict[str, str]]], concurrency: int, transport: str) -> None:
    """The ceiling: ``AsyncOpenAI`` on the ``httpx`` or ``aiohttp`` transport, a semaphore, nothing else (also benchmarks/peers.py)."""
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        http_client: Any = openai.DefaultAioHttpClient(limits=limits, timeout=120.0)
    else:
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=120.0)
    client = openai.AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, http_client=http_client)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(messages: list[dict[str, str]]) -> None:
        async with semaphore:
            completion = await client.chat.completions.create(
                model="bench",
                messages=messages,
                temperature=0.7,
                top_p=1.0,
                max_tokens=_MAX_TOKENS,  # type: ignore[arg-type]
            )
            assert completion.choices[0].message.content

    try:
        await asyncio.gather(*(one(messages) for messages in prompts))
    finally:
        await client.close()


async def _engine(url: str, n: int, concurrency: int, workdir: Path) -> None:
    from mediflow.engine import Engine, LimitsConfig
    from mediflow.teachers import ChatRequest
    from mediflow.teachers.factory import TeacherConfig, teacher_from

    limits = LimitsConfig(concurrency=concurrency)
    teacher = teacher_from(TeacherConfig("openai:bench", base_url=url), limits)
    requests = [ChatRequest(messages=(("system", _SYSTEM), ("user", _user_prompt(i))), max_tokens=_MAX_TOKENS) for i in range(n)]
    try:
        async with Engine(teacher, workdir / "cache.sqlite", limits) as engine:
            await asyncio.gather(*(engine.complete(request) for request in requests))
    finally:
        await teacher.aclose()


def generate_config(url: str, n: int, concurrency: int, out: Path) -> dict[str, Any]:
    """A run of about ``n`` teacher requests: n/3 records of document, instruction and response each."""
    return {
        "teacher": {"spec": "openai:bench", "base_url": str(url)},
        "per_cell": 1 + n // 15000,  # per_cell 1 plans ~5,400 records; max_records takes a stratified prefix
        "max_records": max(1, n // 3),
        "documents_per_instruction": 1,
        "json_share": 0.5,
        "limits": {"concurrency": concurrency},
        "output": {"dir": str(out)},
    }


def _generate(url: str, n: int, concurrency: int, workdir: Path) -> None:
    from mediflow.config import load_config
    from mediflow.pipeline.run import run_async

    config = load_config(generate_config(url, n, concurrency, workdir / "run"))
    summary = asyncio.run(run_async(config))
    assert summary.status == "finished", summary


def _measure(path: str, url: str, n: int, concurrency: int, workdir: Path) -> dict[str, float]:
    """Run one path in this (child) process; wall and CPU seconds of the timed part only.

    Imports happen before the timing (every path pays them once per process, not per request).
    """
    import mediflow.engine  # noqa: F401
    import mediflow.pipeline.run  # noqa: F401
    import mediflow.teachers.openai_compat  # noqa: F401

    if path == "generate":
        from mediflow import terminology

        terminology.is_valid("I10")  # the once-per-process table load, outside the timing
    started, cpu = time.perf_counter(), _cpu_seconds()
    if path in ("bare-httpx", "bare-aiohttp"):
        asyncio.run(_bare(url, n, concurrency, path.partition("-")[2]))
    elif path == "engine":
        asyncio.run(_engine(url, n, concurrency, workdir))
    elif path == "generate":
        _generate(url, n, concurrency, workdir)
    else:
        raise ValueError(path)
    return {"wall_s": time.perf_counter() - started, "cpu_s": _cpu_seconds() - cpu}


# --- the parent: servers, children, table ---------------------------------------------------------


def _run_child(path: str, url: TeacherServerURL, n: int, concurrency: int, workdir: Path) -> dict[str, float]:
    """One path in a fresh process. The CLI is timed from outside (start-up included)."""
    workdir.mkdir(parents=True)
    if path == "cli":
        config = workdir / "run.yaml"
        config.write_text(yaml.safe_dump(generate_config(url, n, concurrency, workdir / "run")))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mediflow", "generate", "--config", str(config)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return {"wall_s": wall, "cpu_s": cpu}
    command = [sys.executable, __file__, "--child", path, "--url", url, "--requests", str(n)]
    command += ["--concurrency", str(concurrency), "--workdir", str(workdir)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_latency(latency: float, n: int, concurrency: int, paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    with teacher_server("--latency", str(latency)) as url, tempfile.TemporaryDirectory(prefix="mediflow-bench-") as tmp:
        assert url.pid is not None
        for path in paths:
            url.reset()
            server_cpu = _process_cpu_seconds(url.pid)
            timing = _run_child(path, url, n, concurrency, Path(tmp) / path)
            server_cpu_after = _process_cpu_seconds(url.pid)
            requests = url.stats()["requests"]
            rows.append(
                {
                    "latency_s": latency,
                    "path": path,
                    "requests": requests,
                    "concurrency": concurrency,
                    "wall_s": round(timing["wall_s"], 3),
                    "req_per_s": round(requests / timing["wall_s"], 1),
                    "client_cpu_ms_per_req": round(1000 * timing["cpu_s"] / requests, 3),
                    "server_cpu_ms_per_req": (round(1000 * (server_cpu_after - server_cpu) / requests, 3) if server_cpu is not None and server_cpu_after is not None else None),
                }
            )
            print(_format_row(rows[-1]), flush=True)
    ceiling = max((row["req_per_s"] for row in rows if row["path"].startswith("bare")), default=None)
    for row in rows:
        row["vs_bare"] = round(row["req_per_s"] / ceiling, 3) if ceiling else None
    return rows


_HEADER = f"{'latency':>7}  {'path':<24}{'requests':>9}{'wall s':>8}{'req/s':>8}{'vs bare':>8}{'ours CPU ms/req':>16}{'server CPU ms/req':>18}"


def _format_row(row: dict[str, Any]) -> str:
    ratio = f"{row['vs_bare']:.2f}" if row.get("vs_bare") is not None else "-"
    server = f"{row['server_cpu_ms_per_req']:.2f}" if row["server_cpu_ms_per_req"] is not None else "?"
    return f"{row['latency_s']:>6g}s  {LABELS[row['path']]:<24}{row['requests']:>9}{row['wall_s']:>8.2f}{row['req_per_s']:>8.1f}{ratio:>8}{row['client_cpu_ms_per_req']:>16.2f}{server:>18}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="teacher requests per path (N)")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight (C)")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.5], help="server latencies (s)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to measure")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.url, args.requests, args.concurrency, args.workdir)))
        return

    print(f"N={args.requests} requests per path, C={args.concurrency}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rows: list[dict[str, Any]] = []
    for latency in args.latency:
        print(_HEADER, flush=True)
        rows += measure_latency(latency, args.requests, args.concurrency, args.paths)
    print("\n" + _HEADER)
    for row in rows:
        print(_format_row(row))
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
