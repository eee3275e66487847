"""The fake ComfyUI of tests/fakecomfy.py in a process of its own, for benchmarks that must
not share their event loop (and CPU time) with it.

    python bench/_fake_server.py --job-seconds 0.05

Prints one JSON line ``{"url": ...}`` once it listens on 127.0.0.1, serves until its stdin
closes, then prints one JSON line of what it saw: accepted WebSockets, jobs run, requests
per method and path, and each job's ``execution_success`` stamp (ms since the epoch).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import _common  # noqa: F401 - puts tests/ on sys.path
import anyio
from fakecomfy import FakeComfy, Script


def stats(fake: FakeComfy) -> dict[str, Any]:
    requests: dict[str, int] = {}
    for seen in fake.seen:
        key = f"{seen.method} /{seen.path.strip('/').split('/')[0]}"
        requests[key] = requests.get(key, 0) + 1
    finished = {}
    for prompt_id, entry in fake.history.items():
        stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
        finished[prompt_id] = stamps.get("execution_success")
    return {"ws_clients": len(fake.ws_clients), "jobs": len(fake.started),
            "requests": requests, "finished": finished}


async def serve(job_seconds: float) -> None:
    async with FakeComfy.serve(Script(duration=job_seconds, steps=2)) as fake:
        print(json.dumps({"url": fake.url}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
        print(json.dumps(stats(fake)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job-seconds", type=float, default=0.0)
    anyio.run(serve, parser.parse_args().job_seconds)


if __name__ == "__main__":
    main()
