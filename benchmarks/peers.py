"""Our engines against the peers: the same N prompts, the same concurrency, one test teacher server.

Paths (each in a fresh child process, against a server whose counters were reset):

- ``bare openai (httpx)`` / ``bare openai (aiohttp)``: ``AsyncOpenAI`` + a semaphore (the ceiling);
- ``engine``: our Engine (cache, limits, retries, accounting) over the N requests;
- ``ray engine``: the same requests as rows of an LLMStep on ``engine: ray`` (2 actors, a local Ray
  started before the timing; its start-up is printed apart);
- ``curator``: bespokelabs-curator's ``LLM`` on its OpenAI backend (``max_concurrent_requests``);
- ``distilabel``: a distilabel ``Pipeline`` of ``LoadDataFromDicts >> TextGeneration(OpenAILLM)``.

The peers are installed by this script into their own virtual environment (``--peers-venv``,
created if missing, ``pip install bespokelabs-curator distilabel``); a peer that does not install
or import is skipped with the reason. Every path reads the same prompts file. Requests are counted
by the server; wall time is the child's timed section; CPU (user + system) and peak RSS are of the
child's whole process tree (Ray's and distilabel's worker processes included), sampled every 0.1 s
with psutil; ``vs bare`` is req/s over the faster bare client's.

    flock /tmp/mediflow-heavy.lock python benchmarks/peers.py --requests 2000 --concurrency 64 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PATHS = ("bare-httpx", "bare-aiohttp", "engine", "ray-engine", "curator", "distilabel")
PEERS = {"curator": ("bespokelabs-curator", "bespokelabs.curator"), "distilabel": ("distilabel", "distilabel")}
LABELS = {
    "bare-httpx": "bare openai (httpx)",
    "bare-aiohttp": "bare openai (aiohttp)",
    "engine": "mediflow engine",
    "ray-engine": "mediflow ray engine",
    "curator": "bespokelabs-curator",
    "distilabel": "distilabel",
}
MAX_TOKENS = 512


# --- children: each path in its own process (the peers' under their own interpreter) --------------


def _prompts(path: Path) -> list[list[dict[str, str]]]:
    return json.loads(path.read_text())


def _child(path: str, url: str, prompts_file: Path, concurrency: int, workdir: Path) -> dict[str, float]:
    """Run one path here; returns the timed section's wall seconds (and set-up seconds outside it)."""
    prompts = _prompts(prompts_file)
    setup = 0.0
    if path in ("bare-httpx", "bare-aiohttp"):
        from throughput import bare_client

        started = time.perf_counter()
        asyncio.run(bare_client(url, prompts, concurrency, path.partition("-")[2]))
    elif path == "engine":
        started = time.perf_counter()
        asyncio.run(_engine(url, prompts, concurrency, workdir))
    elif path == "ray-engine":
        started, setup = _ray_engine(url, prompts, concurrency, workdir)
    elif path == "curator":
        started = time.perf_counter()
        _curator(url, prompts, concurrency, workdir)
    elif path == "distilabel":
        started = time.perf_counter()
        _distilabel(url, prompts, concurrency, workdir)
    else:
        raise ValueError(path)
    return {"wall_s": time.perf_counter() - started, "setup_s": setup}


def _request(messages: list[dict[str, str]]) -> Any:
    from mediflow.teachers import ChatRequest

    return ChatRequest(messages=tuple((m["role"], m["content"]) for m in messages), temperature=0.7, top_p=1.0, max_tokens=MAX_TOKENS)


async def _engine(url: str, prompts: list[list[dict[str, str]]], concurrency: int, workdir: Path) -> None:
    from mediflow.engine import Engine, LimitsConfig
    from mediflow.teachers import make_teacher

    teacher = make_teacher("openai:bench", base_url=url, max_connections=concurrency, timeout=120.0)
    try:
        async with Engine(teacher, workdir / "cache.sqlite", LimitsConfig(concurrency=concurrency), progress=False) as engine:
            await asyncio.gather(*(engine.complete(_request(messages)) for messages in prompts))
    finally:
        await teacher.aclose()


def _ray_engine(url: str, prompts: list[list[dict[str, str]]], concurrency: int, workdir: Path) -> tuple[float, float]:
    import ray

    from mediflow.engine import LimitsConfig
    from mediflow.scale.config import RayConfig
    from mediflow.scale.ray_runner import StepWork, run_step_on_ray
    from mediflow.steps import Answer, LLMStep
    from mediflow.teachers.factory import TeacherConfig

    class PromptStep(LLMStep[list, str]):
        def request(self, row: list) -> Any:
            return _request(row)

        def parse(self, row: list, answer: Answer) -> str:
            return answer.text

    setup_started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    setup = time.perf_counter() - setup_started
    config = RayConfig(actors=2, batch_size=32)
    work = StepWork(PromptStep(), TeacherConfig(spec="openai:bench", base_url=url), LimitsConfig(concurrency=concurrency), workdir / "cache.sqlite")
    started = time.perf_counter()
    results = run_step_on_ray(prompts, work, config, folder=workdir).results
    assert len(results) == len(prompts) and all(result.ok for result in results)
    return started, setup


def _curator(url: str, prompts: list[list[dict[str, str]]], concurrency: int, workdir: Path) -> None:
    from bespokelabs import curator

    class Bench(curator.LLM):
        def prompt(self, input: dict) -> list[dict[str, str]]:
            return json.loads(input["messages"])

        def parse(self, input: dict, response: str) -> dict:
            return {"text": response}

    llm = Bench(
        model_name="gpt-4o-mini",  # curator looks the name up for costs; the server ignores it
        backend="openai",
        generation_params={"temperature": 0.7, "top_p": 1.0, "max_tokens": MAX_TOKENS},
        backend_params={
            "base_url": url,
            "api_key": "not-needed",
            "max_concurrent_requests": concurrency,
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 10_000_000_000,
            "max_retries": 0,
            "request_timeout": 120,
        },
    )
    rows = [{"messages": json.dumps(messages)} for messages in prompts]
    result = llm(rows)
    assert len(result.dataset) == len(prompts), len(result.dataset)


def _distilabel(url: str, prompts: list[list[dict[str, str]]], concurrency: int, workdir: Path) -> None:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    with Pipeline(name="bench", cache_dir=str(workdir / "distilabel")) as pipeline:
        load = LoadDataFromDicts(data=[{"messages": messages} for messages in prompts], batch_size=concurrency)
        generate = ChatGeneration(
            llm=OpenAILLM(model="bench", base_url=url, api_key="not-needed", max_retries=0, timeout=120),
            input_batch_size=concurrency,
        )
        load >> generate
    distiset = pipeline.run(
        use_cache=False,
        parameters={generate.name: {"llm": {"generation_kwargs": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": MAX_TOKENS}}}},
    )
    assert len(distiset["default"]["train"]) == len(prompts)


# --- the parent: server, peers' environment, children, process-tree sampling, table ----------------


def _peers_python(venv: Path) -> Path:
    """The peers' interpreter, after installing them there (each failure is reported by its probe later)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for package, module in PEERS.values():
        if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode != 0:
            print(f"installing {package} into {venv} ...", flush=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", package, "openai"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return python


def _peer_missing(python: Path, path: str) -> str | None:
    package, module = PEERS[path]
    probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"{package} does not import in the peers' environment: {last}"


def _sample_tree(process: Any, peak: dict[str, float]) -> None:
    import psutil

    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return
    rss = 0
    for member in members:
        try:
            times = member.cpu_times()
            cpu = times.user + times.system + times.children_user + times.children_system
            peak[f"cpu:{member.pid}"] = max(peak.get(f"cpu:{member.pid}", 0.0), cpu)
            rss += member.memory_info().rss
        except psutil.Error:
            continue
    peak["rss"] = max(peak.get("rss", 0), rss)


def _run_child(python: Path, path: str, url: str, prompts: Path, concurrency: int, workdir: Path) -> dict[str, float]:
    import psutil

    workdir.mkdir(parents=True)
    env = {**os.environ, "CURATOR_CACHE_DIR": str(workdir / "curator"), "HOME": str(workdir), "TELEMETRY_ENABLED": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH", "")) if p)
    command = [str(python), __file__, "--child", path, "--url", url, "--prompts", str(prompts), "--concurrency", str(concurrency), "--workdir", str(workdir)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    process, peak = psutil.Process(child.pid), {}
    while child.poll() is None:
        _sample_tree(process, peak)
        time.sleep(0.1)
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError((err.strip().splitlines() or ["failed"])[-1])
    timing = json.loads(out.strip().splitlines()[-1])
    cpu = sum(value for key, value in peak.items() if key.startswith("cpu:"))
    return {**timing, "cpu_s": cpu, "peak_rss_mb": peak.get("rss", 0) / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="teacher requests per path (N)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (C)")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--peers-venv", type=Path, default=Path(tempfile.gettempdir()) / "mediflow-peers-venv")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.url, args.prompts, args.concurrency, args.workdir)))
        return

    from throughput import _SYSTEM, _user_prompt

    from mediflow.testing import teacher_server

    peers_python = _peers_python(args.peers_venv) if any(p in PEERS for p in args.paths) else Path(sys.executable)
    print(f"N={args.requests} requests per path, C={args.concurrency}, server latency {args.latency}s, {os.cpu_count()} CPUs")
    rows: list[dict[str, Any]] = []
    with teacher_server("--latency", str(args.latency)) as url, tempfile.TemporaryDirectory(prefix="mediflow-peers-") as tmp:
        prompts = Path(tmp) / "prompts.json"
        prompts.write_text(json.dumps([[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _user_prompt(i)}] for i in range(args.requests)]))
        for path in args.paths:
            python = peers_python if path in PEERS else Path(sys.executable)
            missing = _peer_missing(python, path) if path in PEERS else None
            if missing:
                print(f"skipped {LABELS[path]}: {missing}", flush=True)
                continue
            url.reset()
            try:
                timing = _run_child(python, path, url, prompts, args.concurrency, Path(tmp) / path)
            except RuntimeError as exc:
                print(f"skipped {LABELS[path]}: it failed: {exc}", flush=True)
                continue
            served = url.stats()["requests"]
            rows.append(
                {
                    "path": path,
                    "requests": served,
                    "wall_s": round(timing["wall_s"], 2),
                    "req_per_s": round(served / timing["wall_s"], 1),
                    "cpu_ms_per_req": round(1000 * timing["cpu_s"] / max(served, 1), 2),
                    "peak_rss_mb": round(timing["peak_rss_mb"]),
                    "setup_s": round(timing["setup_s"], 1),
                }
            )
            print(_format(rows[-1]), flush=True)
    ceiling = max((row["req_per_s"] for row in rows if row["path"].startswith("bare")), default=None)
    for row in rows:
        row["vs_bare"] = round(row["req_per_s"] / ceiling, 2) if ceiling else None
    print("\n| path | requests (server) | wall s | req/s | vs bare | CPU ms/req (process tree) | peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {LABELS[row['path']]} | {row['requests']} | {row['wall_s']} | {row['req_per_s']} | {row['vs_bare']} | {row['cpu_ms_per_req']} | {row['peak_rss_mb']} |")
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


def _format(row: dict[str, Any]) -> str:
    setup = f" (+{row['setup_s']}s Ray start, untimed)" if row["setup_s"] else ""
    return f"{LABELS[row['path']]:<24}{row['requests']:>7} req {row['wall_s']:>8.2f}s {row['req_per_s']:>8.1f} req/s {row['cpu_ms_per_req']:>8.2f} CPU ms/req {row['peak_rss_mb']:>6} MB{setup}"


if __name__ == "__main__":
    main()
