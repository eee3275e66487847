"""Many jobs at once: 200 concurrent ``generate_art`` calls through one comfy-mcp process.

The fake ComfyUI of tests/fakecomfy.py runs in a child process (bench/_fake_server.py) on
127.0.0.1, one job at a time, each with a fixed sampler time. ``python -m comfy_mcp`` is
spawned once and driven over stdio by the MCP SDK client, with every call in flight at the
same time. Checks: no call fails; every call's seed comes back; its saved file is its own
(distinct paths) and has the colour the fake derives from that seed; its preview shows that
colour too; the fake saw exactly one WebSocket. Reports the peak RSS of the comfy-mcp process
(VmHWM from /proc), its CPU time, the requests it made, and how long finished jobs wait.

    .venv/bin/python bench/concurrency.py [--calls 200] [--job-seconds 0.05] [--trace]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import anyio
from anyio.abc import Process
from PIL import Image

RSS_TARGET_MB = 150.0
FIRST_SEED = 7_000_000


@dataclass
class Outcome:
    seed: int
    seconds: float = 0.0
    error: str | None = None
    path: Path | None = None
    prompt_id: str = ""
    returned: float = 0.0  # time.time() when call_tool returned
    result: Any = None


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    fake: dict[str, Any] = field(default_factory=dict)  # what the fake saw (_fake_server.py)
    rss_start_kb: int | None = None
    peak_rss_kb: int | None = None
    wall: float = 0.0
    trace: str = ""  # the server's TRACE lines, with --trace
    cpu_server: float = 0.0  # CPU seconds comfy-mcp used during the calls
    cpu_client: float = 0.0  # and this process (the MCP client)

    def finished(self, outcome: Outcome) -> float | None:
        """When the fake ended the outcome's job (execution_success), in seconds."""
        stamp = self.fake.get("finished", {}).get(outcome.prompt_id)
        return None if stamp is None else stamp / 1000


# -- the fake ComfyUI in a child process --------------------------------------------------------


@asynccontextmanager
async def fake_comfy(job_seconds: float, log: Any) -> AsyncIterator[tuple[str, dict]]:
    """Start bench/_fake_server.py; yield its URL and a dict filled with its stats at exit."""
    command = [c.PYTHON, str(c.BENCH_DIR / "_fake_server.py"), "--job-seconds",
               str(job_seconds)]
    process = await anyio.open_process(command, stderr=log, env=c.loopback_env({}))
    stats: dict[str, Any] = {}
    try:
        lines = _lines(process)
        url = json.loads(await lines.__anext__())["url"]
        yield url, stats
        assert process.stdin is not None
        await process.stdin.aclose()
        stats.update(json.loads(await lines.__anext__()))
    finally:
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _lines(process: Process) -> AsyncIterator[str]:
    buffer = b""
    assert process.stdout is not None
    async for chunk in process.stdout:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


# -- checking each result ---------------------------------------------------------------------


def expected_colour(seed: int) -> tuple[int, int, int]:
    """The colour the fake's KSampler gives a seed (see tests/fakecomfy.py)."""
    number = random.Random(seed).randrange(0x1000000)
    return (number >> 16) & 255, (number >> 8) & 255, number & 255


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _centre(data: bytes) -> tuple[int, ...]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return tuple(image.getpixel((image.width // 2, image.height // 2)))


def check(result: Any, outcome: Outcome) -> None:
    """Fill ``outcome`` with the saved path, or with what is wrong about the result."""
    text = c.result_text(result)
    if result.is_error:
        outcome.error = text[:200]
        return
    seed = re.search(r"^seed: (\d+)$", text, re.M)
    paths = c.saved_paths(result)
    previews = c.result_images(result)
    want = expected_colour(outcome.seed)
    if seed is None or int(seed.group(1)) != outcome.seed:
        outcome.error = f"seed {outcome.seed} not reported back"
    elif len(paths) != 1 or not paths[0].is_file():
        outcome.error = f"expected one saved file, got {paths}"
    elif Image.open(paths[0]).convert("RGB").getpixel((0, 0)) != want:
        outcome.error = f"saved file {paths[0]} does not have the colour of seed {outcome.seed}"
    elif len(previews) != 1 or not close(_centre(previews[0]), want, 8):
        outcome.error = f"preview does not show the colour of seed {outcome.seed}"
    else:
        outcome.path = paths[0]
        outcome.prompt_id = c.prompt_id_of(result)


# -- the run ----------------------------------------------------------------------------------


async def call(client: Any, outcome: Outcome) -> None:
    started = time.perf_counter()
    try:
        outcome.result = await client.call_tool("generate_art", {
            "prompt": f"job {outcome.seed}", "seed": outcome.seed, "steps": 2})
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, keep going
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.seconds = time.perf_counter() - started
        outcome.returned = time.time()


async def run_calls(client: Any, pid: int, tally: Tally) -> None:
    tally.rss_start_kb = c.proc_status_kb(pid, "VmRSS")
    started = time.perf_counter()
    cpu = c.cpu_seconds(pid), c.cpu_seconds()
    async with anyio.create_task_group() as tasks:
        for outcome in tally.outcomes:
            tasks.start_soon(call, client, outcome)
    tally.wall = time.perf_counter() - started
    tally.cpu_server = c.cpu_seconds(pid) - cpu[0]
    tally.cpu_client = c.cpu_seconds() - cpu[1]
    tally.peak_rss_kb = c.proc_status_kb(pid, "VmHWM")
    for outcome in tally.outcomes:  # checked afterwards, so that checking delays no call
        if outcome.result is not None:
            check(outcome.result, outcome)
            outcome.result = None


async def measure(calls: int, job_seconds: float, scratch: Path, trace: bool) -> Tally:
    tally = Tally([Outcome(FIRST_SEED + i) for i in range(calls)])
    command = c.comfy_mcp_command()
    if trace:
        command = [c.PYTHON, str(c.BENCH_DIR / "_trace_server.py")]
    with open(scratch / "servers.log", "w") as log:
        async with fake_comfy(job_seconds, log) as (url, stats):
            env = c.comfy_mcp_env(url, scratch / "out")
            async with c.stdio_client(command, env, log) as client:
                pids = c.children_matching(command[-1])
                if len(pids) != 1:
                    raise RuntimeError(f"expected one comfy-mcp child process, found {pids}")
                await run_calls(client, pids[0], tally)
        tally.fake = stats
    if trace:
        tally.trace = (scratch / "servers.log").read_text()
    return tally


# -- report ----------------------------------------------------------------------------------

TRACED = (("ws execution_success", "execution_success event read"),
          ("ws executing None", "executing null event read"),
          ("history end", "GET /history done (last)"),
          ("generation_content end", "tool result built"))


def trace_rows(tally: Tally) -> list[list[object]]:
    """Median and p90 of each stage, in ms after the job's execution_success."""
    marks: dict[tuple[str, str], float] = {}
    for line in tally.trace.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "TRACE" and len(words[-1]) == 36:
            marks[(" ".join(words[2:-1]), words[-1])] = float(words[1])  # keeps the last
    stages = [(label, {o.prompt_id: marks.get((key, o.prompt_id)) for o in tally.outcomes})
              for key, label in TRACED]
    stages.append(("response line read by the client",
                   {o.prompt_id: c.Wire.by_prompt.get(o.prompt_id) for o in tally.outcomes}))
    stages.append(("call_tool returned", {o.prompt_id: o.returned for o in tally.outcomes}))
    rows = []
    for label, times in stages:
        late = [at - end for o in tally.outcomes
                if (at := times.get(o.prompt_id)) is not None
                and (end := tally.finished(o)) is not None]
        rows.append([label, c.ms(c.median(late)), c.ms(c.p90(late))])
    return rows


def requests_text(tally: Tally) -> str:
    requests = tally.fake.get("requests", {})
    parts = sorted(requests.items(), key=lambda item: -item[1])
    return f"{sum(requests.values())} (" + ", ".join(f"{k} {n}" for k, n in parts) + ")"


def summary_rows(tally: Tally, job_seconds: float) -> list[list[object]]:
    done = [o for o in tally.outcomes if o.error is None]
    seconds = [o.seconds for o in tally.outcomes]
    late = [o.returned - end for o in done if (end := tally.finished(o)) is not None]
    notes = ", ".join(f"{n} {m}" for m, n in c.Wire.notifications.items()) or "none"
    return [
        ["calls in flight at once", len(tally.outcomes)],
        ["completed with the right image", len(done)],
        ["errors", len(tally.outcomes) - len(done)],
        ["distinct saved files", len({o.path for o in done})],
        ["jobs the fake ran", tally.fake.get("jobs")],
        ["WebSocket connections the fake saw", tally.fake.get("ws_clients")],
        ["HTTP requests the fake saw", requests_text(tally)],
        ["notifications comfy-mcp sent", notes],
        ["wall time, all calls", f"{tally.wall:.2f} s"],
        ["of which the fake's sampler time (one job at a time)",
         f"{(tally.fake.get('jobs') or 0) * job_seconds:.2f} s"],
        ["per call, median / p90 (includes waiting in the queue)",
         f"{c.median(seconds):.2f} s / {c.p90(seconds):.2f} s"],
        ["a job's end to its result in the client, median / p90 / max",
         f"{c.ms(c.median(late))} / {c.ms(c.p90(late))} / {c.ms(max(late, default=0))} ms"],
        ["CPU time during the calls: comfy-mcp / the MCP client",
         f"{tally.cpu_server:.1f} s / {tally.cpu_client:.1f} s"],
        ["comfy-mcp RSS after start", f"{(tally.rss_start_kb or 0) / 1024:.0f} MB"],
        ["comfy-mcp peak RSS (VmHWM)", f"{(tally.peak_rss_kb or 0) / 1024:.0f} MB"],
    ]


def report(tally: Tally, job_seconds: float) -> str:
    errors = [o for o in tally.outcomes if o.error is not None]
    done = len(tally.outcomes) - len(errors)
    distinct = len({o.path for o in tally.outcomes if o.error is None})
    sockets = tally.fake.get("ws_clients")
    peak_mb = (tally.peak_rss_kb or 0) / 1024
    ok = not errors and sockets == 1 and peak_mb < RSS_TARGET_MB and distinct == done
    lines = [
        "## 3. Many jobs at once (`bench/concurrency.py`)", "", f"Run {c.stamp()}.", "",
        f"One `python -m comfy_mcp` over stdio (MCP SDK client), {len(tally.outcomes)} "
        "concurrent `generate_art` calls (txt2img, 512x512, distinct seeds) against the fake "
        f"ComfyUI (own process) with a fixed job time of {job_seconds * 1000:.0f} ms.", "",
        c.table(["measure", "value"], summary_rows(tally, job_seconds)), "",
        f"Target: no errors, one WebSocket, RSS < {RSS_TARGET_MB:.0f} MB: {c.verdict(ok)} "
        f"({len(errors)} errors, {sockets} socket(s), peak {peak_mb:.0f} MB).",
    ]
    lines += [f"- error: seed {o.seed}: {o.error}" for o in errors[:10]]
    if tally.trace:
        lines += ["", "Where a finished job waits (server run through `bench/_trace_server.py`):",
                  "", c.table(["stage", "ms after the job's end (median)", "p90"],
                              trace_rows(tally))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    parser.add_argument("--trace", action="store_true", help="run the server through "
                        "bench/_trace_server.py and show where finished jobs wait")
    c.add_common_arguments(parser)
    args = parser.parse_args()
    c.apply_common_arguments(args)
    with tempfile.TemporaryDirectory(prefix="comfy-mcp-bench-") as tmp:
        tally = anyio.run(measure, args.calls, args.job_seconds, Path(tmp), args.trace)
        body = report(tally, args.job_seconds)
    print(body)
    c.update_results("concurrency", body)


if __name__ == "__main__":
    sys.exit(main())
