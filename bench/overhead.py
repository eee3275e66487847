"""Overhead after completion: ComfyUI's ``execution_success`` to the tool result in the client.

Starts the real CPU ComfyUI (scripts/comfyui_cpu.py) and ``python -m comfy_mcp`` over stdio,
then calls ``generate_art`` for three cases: a model-free one-colour image of 512x512 and of
1024x1024 (EmptyImage -> SaveImage, a bench template whose seed is the colour, so no run is
cached) and txt2img at 512x512 on the generated checkpoint (1 step, cfg 1).

For each call: overhead = the moment the response line was read by the client (and the
moment ``call_tool`` returned) minus the ``execution_success`` timestamp of the job's history
entry (ms since the epoch, same clock). Next to it, a *floor*: a bare client in this process
(one WebSocket, one keep-alive HTTP client) runs the same graph and stops the clock when it has
the PNG bytes; that is what any client must wait for. Then each step comfy-mcp takes after
completion is timed in-process on the same output file, to show where the time goes.

    .venv/bin/python bench/overhead.py [--runs 15] [--floor-runs 5] [--trace-runs 5]
        [--cases blank photo txt2img] [--source DIR] [--no-results] [--also DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import anyio
import comfyui_cpu
import httpx
from websockets.asyncio.client import connect

TARGET_MS = 30.0
STEP_REPEATS = 15


PHOTO = "bench-photo-1024.png"  # uploaded to ComfyUI's input folder before the runs


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # blank, photo or txt2img
    size: int

    def arguments(self, number: int) -> dict[str, Any]:
        """generate_art arguments; ``number`` makes the job new (no ComfyUI cache hit)."""
        if self.kind == "blank":
            return {"template": "bench_blank", "prompt": "bench/blank", "width": self.size,
                    "height": self.size, "seed": number}
        if self.kind == "photo":  # a new file prefix re-runs SaveImage, LoadImage is cached
            return {"template": "bench_load", "prompt": f"bench/photo-{number}", "image": PHOTO}
        return {"prompt": "a lighthouse on a cliff at dusk", "width": self.size,
                "height": self.size, "steps": 1, "cfg": 1.0, "seed": number}

    def graph(self, number: int) -> dict[str, Any]:
        """The same job as a raw API graph, for the bare client."""
        if self.kind == "blank":
            graph = json.loads(json.dumps(c.BLANK_TEMPLATE["graph"]))
            graph["1"]["inputs"].update(width=self.size, height=self.size, color=number)
            return graph
        if self.kind == "photo":
            graph = json.loads(json.dumps(c.LOAD_TEMPLATE["graph"]))
            graph["1"]["inputs"]["image"] = PHOTO
            graph["2"]["inputs"]["filename_prefix"] = f"floor/photo-{number}"
            return graph
        graph = comfyui_cpu.txt2img_graph(number, "floor/txt2img", self.size)
        graph["3"]["inputs"].update(cfg=1.0, steps=1)
        return graph


CASES = (
    Case("blank 512x512", "blank", 512),
    Case("blank 1024x1024", "blank", 1024),
    Case("photo-like 1024x1024", "photo", 1024),
    Case("txt2img 512x512", "txt2img", 512),
)


@dataclass
class Runs:
    """Per-call figures of one case, in seconds."""

    arrival: list[float] = field(default_factory=list)  # success stamp -> line read
    returned: list[float] = field(default_factory=list)  # success stamp -> call_tool returned
    job: list[float] = field(default_factory=list)  # ComfyUI's execution_start -> success
    size: list[int] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)  # bare client: stamp -> PNG in hand
    floor_ws: list[float] = field(default_factory=list)  # bare client: stamp -> executing null
    success: list[float] = field(default_factory=list)  # the execution_success stamps
    last_prompt_id: str = ""


# -- comfy-mcp over stdio -----------------------------------------------------------------------


async def measure_calls(client: Any, url: str, case: Case, runs: Runs, count: int,
                        seeds: list[int]) -> None:
    for _ in range(count):
        result = await client.call_tool("generate_art", case.arguments(seeds.pop()))
        returned = time.time()
        arrival = c.Wire.last
        prompt_id = c.prompt_id_of(result)
        started, success = c.history_times(c.fetch_history(url, prompt_id))
        runs.arrival.append(arrival.at - success)
        runs.returned.append(returned - success)
        runs.job.append(success - started)
        runs.size.append(arrival.size)
        runs.success.append(success)
        runs.last_prompt_id = prompt_id


# -- the floor: a bare client -------------------------------------------------------------------


class BareClient:
    """One WebSocket and one keep-alive HTTP client, no checks: the least work possible."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.http = httpx.AsyncClient(trust_env=False, timeout=120)
        self.ws: Any = None

    async def __aenter__(self) -> BareClient:
        ws_url = self.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.ws = await connect(ws_url, proxy=None, max_size=2**26)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.aclose()

    async def run(self, graph: dict[str, Any]) -> tuple[float, float]:
        """Seconds from execution_success to executing null, and to the PNG downloaded."""
        prompt_id = str(uuid.uuid4())
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        (await self.http.post(self.url + "/prompt", json=body)).raise_for_status()
        async for message in self.ws:
            if not isinstance(message, str):
                continue
            event = json.loads(message)
            data = event.get("data") or {}
            if event["type"] == "executing" and data.get("node") is None \
                    and data.get("prompt_id") == prompt_id:
                break
        done = time.time()
        reply = await self.http.get(f"{self.url}/history/{prompt_id}")
        entry = reply.json()[prompt_id]
        image = next(iter(entry["outputs"].values()))["images"][0]
        params = {k: image[k] for k in ("filename", "subfolder", "type")}
        (await self.http.get(self.url + "/view", params=params)).raise_for_status()
        downloaded = time.time()
        success = c.history_times(entry)[1]
        return done - success, downloaded - success


async def measure_floor(url: str, case: Case, runs: Runs, count: int, seeds: list[int]) -> None:
    async with BareClient(url) as bare:
        for _ in range(count):
            ws_done, downloaded = await bare.run(case.graph(seeds.pop()))
            runs.floor_ws.append(ws_done)
            runs.floor.append(downloaded)


# -- the server's own timeline (comfy-mcp run through bench/_trace_server.py) -------------------

STAGES = (
    ("ws execution_success", "execution_success event read"),
    ("ws executing None", "executing null event read"),
    ("history end", "GET /history done"),
    ("view end", "GET /view done"),
    ("save_output end", "file saved (write+fsync)"),
    ("_previews end", "preview made (decode, resize, JPEG)"),
    ("generation_content end", "content built (text, base64)"),
)
ARRIVAL, RETURNED = "response line read by the client", "call_tool returned"


def parse_trace(text: str) -> list[tuple[float, str]]:
    marks = []
    for line in text.splitlines():
        if line.startswith("TRACE "):
            _, at, what = line.split(" ", 2)
            words = what.split()
            if words and len(words[-1]) == 36 and words[-1].count("-") == 4:
                words.pop()  # the prompt id
            marks.append((float(at), " ".join(words)))
    return marks


def stage_times(marks: list[tuple[float, str]]) -> dict[str, float]:
    """Absolute time of each stage: its first mark after the execution_success event."""
    found: dict[str, float] = {}
    start = next((i for i, (_, what) in enumerate(marks) if what == STAGES[0][0]), None)
    if start is None:
        return found
    for key, label in STAGES:
        at = next((t for t, what in marks[start:] if what == key), None)
        if at is not None:
            found[label] = at
    return found


async def measure_timeline(url: str, scratch: Path, cases: list[Case], count: int,
                           seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """Per case and stage: seconds after the execution_success stamp, one value per call."""
    env = c.comfy_mcp_env(url, scratch / "out-traced", scratch / "wf")
    log_path = scratch / "comfy-mcp-traced.log"
    command = [c.PYTHON, str(c.BENCH_DIR / "_trace_server.py")]
    timeline: dict[str, dict[str, list[float]]] = {}
    with open(log_path, "w") as log:
        async with c.stdio_client(command, env, log) as client:
            for case in cases:
                await measure_calls(client, url, case, Runs(), 1, seeds)  # warm-up
                per_stage = timeline.setdefault(case.name, {})
                for _ in range(count):
                    offset = log_path.stat().st_size
                    runs = Runs()
                    await measure_calls(client, url, case, runs, 1, seeds)
                    success = runs.success[0]
                    marks = parse_trace(log_path.read_bytes()[offset:].decode())
                    stages = stage_times(marks)
                    stages[ARRIVAL] = success + runs.arrival[0]
                    stages[RETURNED] = success + runs.returned[0]
                    for label, at in stages.items():
                        per_stage.setdefault(label, []).append(at - success)
    return timeline


def timeline_table(timeline: dict[str, dict[str, list[float]]]) -> str:
    names = list(timeline)
    labels = [label for _, label in STAGES] + [ARRIVAL, RETURNED]
    rows = []
    for label in labels:
        row: list[object] = [label]
        for name in names:
            row.append(c.ms(c.median(timeline[name].get(label, []))))
        rows.append(row)
    return c.table(["stage (ms after the execution_success stamp, median)"] + names, rows)


# -- where the time goes: each step in-process on the same data -----------------------------------


async def timed(step: Callable[[], Awaitable[Any]], repeats: int = STEP_REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await step()
        times.append(time.perf_counter() - start)
    return c.median(times)


def sync(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return fn()

    return run


async def breakdown(url: str, prompt_id: str, scratch: Path) -> dict[str, float]:
    """Median seconds of each step comfy-mcp takes after ComfyUI's completion."""
    from comfy_mcp import images, outputs, service
    from comfy_mcp.client import ComfyClient

    steps: dict[str, float] = {}
    async with ComfyClient(url) as client:
        await client.history(prompt_id)  # open the keep-alive connection first
        steps["GET /history"] = await timed(lambda: client.history(prompt_id))
        entry = await client.history(prompt_id)
        item = next(iter(entry["outputs"].values()))["images"][0]
        name, sub, kind = item["filename"], item["subfolder"], item["type"]
        steps["GET /view"] = await timed(lambda: client.view(name, sub, kind))
        data = await client.view(name, sub, kind)
    folders = iter(range(10**6))
    steps["save file (write+fsync)"] = await timed(sync(
        lambda: outputs.save_output(scratch / f"s{next(folders)}", sub, name, data)))
    steps["probe header"] = await timed(sync(lambda: images.probe(data)))
    budget = {"max_bytes": service.PREVIEW_BYTES, "max_tokens": service.PREVIEW_TOKENS}

    def decode() -> Any:
        return images._decode(data, max_edge=images.CLAUDE_MAX_EDGE,
                              max_tokens=service.PREVIEW_TOKENS)

    steps["decode PNG (+resize)"] = await timed(sync(decode))
    decoded = decode()
    steps["encode JPEG preview"] = await timed(sync(
        lambda: images._preview_of(decoded, min_edge=16, **budget)))
    previews = service._previews([data])
    gen = service.Generation(prompt_id, "bench", {}, [], previews)
    steps["base64 + content"] = await timed(sync(lambda: content_of(gen, scratch)))
    content = content_of(gen, scratch)
    steps["JSON-RPC serialize"] = await timed(sync(lambda: serialize(content)))
    line = serialize(content)
    steps["client parse"] = await timed(sync(lambda: parse(line)))
    return steps


def content_of(gen: Any, output_dir: Path) -> list[Any]:
    """``server.generation_content`` with whichever arguments this version takes."""
    import inspect

    from comfy_mcp import server

    build = server.generation_content
    if len(inspect.signature(build).parameters) > 1:
        return build(gen, output_dir)
    return build(gen)


def serialize(content: list[Any]) -> str:
    """What the SDK writes for a tool result: result dict, then the JSON-RPC line."""
    from mcp.types import CallToolResult
    from mcp_types import JSONRPCResponse

    result = CallToolResult(content=content).model_dump(by_alias=True, mode="json",
                                                        exclude_none=True)
    message = JSONRPCResponse(jsonrpc="2.0", id=7, result=result)
    return message.model_dump_json(by_alias=True, exclude_unset=True)


def parse(line: str) -> Any:
    from mcp_types import jsonrpc_message_adapter

    return jsonrpc_message_adapter.validate_json(line, by_name=False)


# -- report ----------------------------------------------------------------------------------


def summary_rows(results: dict[str, Runs]) -> list[list[object]]:
    rows = []
    for name, runs in results.items():
        beyond = c.median(runs.returned) - c.median(runs.floor)
        rows.append([
            name, len(runs.returned), c.ms(c.median(runs.job)), c.ms(c.median(runs.arrival)),
            c.ms(c.median(runs.returned)), c.ms(c.p90(runs.returned)),
            c.ms(c.median(runs.floor_ws)), c.ms(c.median(runs.floor)),
            c.ms(c.p90(runs.floor)), c.ms(beyond), f"{c.median(runs.size) / 1000:.0f} KB",
        ])
    return rows


SUMMARY_HEADERS = [
    "case", "n", "ComfyUI job ms", "to line read ms (median)", "to call return ms (median)",
    "to call return ms (p90)", "floor: executing null ms", "floor: PNG in hand ms (median)",
    "floor p90 ms", "ours beyond floor ms", "result size",
]


def breakdown_table(steps: dict[str, dict[str, float]], results: dict[str, Runs]) -> str:
    names = list(steps)
    keys = list(next(iter(steps.values())))
    rows = [[key] + [c.ms(steps[n][key]) for n in names] for key in keys]
    rows.append(["**sum of steps**"] + [c.ms(sum(steps[n].values())) for n in names])
    rows.append(["measured total (median)"] + [c.ms(c.median(results[n].returned))
                                               for n in names])
    rows.append(["rest: ComfyUI's tail, event wake-ups, threads, pipes"] + [
        c.ms(c.median(results[n].returned) - sum(steps[n].values())) for n in names])
    return c.table([f"step (median of {STEP_REPEATS})"] + names, rows)


def report(results: dict[str, Runs], steps: dict[str, dict[str, float]],
           timeline: dict[str, dict[str, list[float]]], runs: int) -> str:
    targets = [name for name in ("blank 1024x1024", "photo-like 1024x1024") if name in results]
    lines = [
        "## 1. Overhead after completion (`bench/overhead.py`)", "",
        f"Run {c.stamp()}.", "",
        "Real CPU ComfyUI 0.3.75; comfy-mcp over stdio (`python -m comfy_mcp`, MCP SDK "
        "client); times from the `execution_success` stamp in the job's history (whole ms) "
        f"to the response line read / `call_tool` returned; medians of {runs} calls. "
        "Floor: a bare WebSocket + HTTP client in the bench process, same graph, until the PNG "
        "is downloaded.", "",
        c.table(SUMMARY_HEADERS, summary_rows(results)), "",
        "Where the time goes, as the server lives it (comfy-mcp run through "
        "`bench/_trace_server.py`, which timestamps each step; "
        f"{len(next(iter(timeline.values()), {}).get(RETURNED, []))} calls per case):", "",
        timeline_table(timeline), "",
        "Each step timed alone, in-process, on the same output file:", "",
        breakdown_table(steps, results), "",
    ]
    for name in targets:
        got = c.median(results[name].returned) * 1000
        margin = (f"by {got - TARGET_MS:.1f} ms" if got > TARGET_MS
                  else f"with {TARGET_MS - got:.1f} ms to spare")
        lines.append(f"Target: median <= {TARGET_MS:.0f} ms for 1024x1024 ({name}): "
                     f"{got:.1f} ms, {c.verdict(got <= TARGET_MS)} {margin}.")
    return "\n".join(lines) + "\n"


# -- A/B: this checkout against another, calls alternating -------------------------------------


async def compare(server_url: str, scratch: Path, args: argparse.Namespace) -> None:
    """Alternate the same calls between this comfy-mcp and the one in ``args.also``, so that
    both see the same load; print the paired figures (RESULTS.md is left alone)."""
    cases = [case for case in CASES if case.kind in args.cases]
    seeds = list(range(0x200000, 0x200000 + 10_000))
    workflows = c.write_templates(scratch / "wf")
    comfyui_cpu.upload_image(server_url, PHOTO, c.photo_png(1, 1024))
    ours_env = c.comfy_mcp_env(server_url, scratch / "out-a", workflows)
    other_env = {**c.comfy_mcp_env(server_url, scratch / "out-b", workflows),
                 "PYTHONPATH": str(args.also.resolve())}
    runs = {(case.name, side): Runs() for case in cases for side in ("a", "b")}
    with open(scratch / "comfy-mcp.log", "w") as log:
        async with c.stdio_client(c.comfy_mcp_command(), ours_env, log) as ours, \
                c.stdio_client(c.comfy_mcp_command(), other_env, log) as other:
            for case in cases:
                for client in (ours, other):  # warm-up
                    await measure_calls(client, server_url, case, Runs(), 1, seeds)
                for _ in range(args.runs):
                    for side, client in (("a", ours), ("b", other)):
                        await measure_calls(client, server_url, case, runs[(case.name, side)],
                                            1, seeds)
    rows = []
    for case in cases:
        a, b = runs[(case.name, "a")].returned, runs[(case.name, "b")].returned
        rows.append([case.name, len(a), c.ms(c.median(a)), c.ms(c.p90(a)), c.ms(c.median(b)),
                     c.ms(c.p90(b)), c.ms(c.median(b) - c.median(a))])
    print(f"A/B, calls alternating; a = this checkout, b = {args.also}; ms from the "
          f"execution_success stamp to call_tool returned ({c.stamp()})\n")
    print(c.table(["case", "n", "a median", "a p90", "b median", "b p90", "b - a"], rows))


# -- main ------------------------------------------------------------------------------------


async def run(server_url: str, scratch: Path, args: argparse.Namespace) -> str:
    cases = [case for case in CASES if case.kind in args.cases]
    seeds = list(range(0x100000, 0x100000 + 10_000))
    results = {case.name: Runs() for case in cases}
    env = c.comfy_mcp_env(server_url, scratch / "out", c.write_templates(scratch / "wf"))
    comfyui_cpu.upload_image(server_url, PHOTO, c.photo_png(1, 1024))
    with open(scratch / "comfy-mcp.log", "w") as log:
        async with c.stdio_client(c.comfy_mcp_command(), env, log) as client:
            for case in cases:
                c.say(f"{case.name}: warm-up, then {args.runs} calls through comfy-mcp")
                await measure_calls(client, server_url, case, Runs(), 1, seeds)
                await measure_calls(client, server_url, case, results[case.name], args.runs,
                                    seeds)
    c.say(f"all cases: {args.trace_runs} calls through the traced comfy-mcp")
    timeline = await measure_timeline(server_url, scratch, cases, args.trace_runs, seeds)
    steps = {}
    for case in cases:
        c.say(f"{case.name}: {args.floor_runs} bare-client runs, then the step timings")
        await measure_floor(server_url, case, results[case.name], args.floor_runs, seeds)
        steps[case.name] = await breakdown(server_url, results[case.name].last_prompt_id,
                                           scratch / "steps" / str(len(steps)))
    body = report(results, steps, timeline, args.runs)
    print(body)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--floor-runs", type=int, default=5)
    parser.add_argument("--trace-runs", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["blank", "photo", "txt2img"],
                        choices=["blank", "photo", "txt2img"])
    parser.add_argument("--also", type=Path, help="only compare this checkout with the "
                        "comfy_mcp of another (e.g. a prototype), calls alternating")
    c.add_common_arguments(parser)
    args = parser.parse_args()
    c.apply_common_arguments(args)
    install = comfyui_cpu.ensure_installed()
    with tempfile.TemporaryDirectory(prefix="comfy-mcp-bench-") as tmp:
        scratch = Path(tmp)
        c.say("starting the CPU ComfyUI on 127.0.0.1 ...")
        with comfyui_cpu.start_server(install, data_dir=scratch / "comfy") as server:
            if args.also is not None:
                anyio.run(compare, server.url, scratch, args)
                return
            body = anyio.run(run, server.url, scratch, args)
    c.update_results("overhead", body)


if __name__ == "__main__":
    sys.exit(main())
