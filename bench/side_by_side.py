"""Side by side: the same txt2img job through ``comfy-mcp-server`` 0.1.11 and through comfy-mcp.

Both MCP servers run over stdio at the same time against one real CPU ComfyUI
(scripts/comfyui_cpu.py) and are called alternately with the same graph (the generated
checkpoint, 1 step); each call gets a new prompt text so ComfyUI caches nothing.
Overhead = tool call time minus ComfyUI's execution time (``execution_start`` to
``execution_success`` in the job's history). comfy-mcp-server polls ``/history`` once a
second; it is installed once in a venv of its own under .cache/bench-venvs/ with the only
working set found (shared/anchor-servers.md): ``comfy-mcp-server==0.1.11 'mcp[cli]==1.9.4'
'pydantic<2.12'``.

    .venv/bin/python bench/side_by_side.py [--runs 15] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import anyio
import comfyui_cpu

TARGET_RATIO = 15.0
THEIRS = "comfy-mcp-server"
THEIRS_REQUIREMENTS = ("comfy-mcp-server==0.1.11", "mcp[cli]==1.9.4", "pydantic<2.12")
SEED = 4242
NEGATIVE = "blurry"  # what comfyui_cpu.txt2img_graph puts in node 7


@dataclass
class Calls:
    call: list[float] = field(default_factory=list)
    job: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> list[float]:
        return [call - job for call, job in zip(self.call, self.job, strict=True)]


def ensure_venv() -> Path:
    """The venv of comfy-mcp-server, created and installed on first use."""
    venv = c.VENVS_DIR / THEIRS
    command = venv / "bin" / THEIRS
    if command.exists():
        return command
    c.say(f"installing {' '.join(THEIRS_REQUIREMENTS)} into {venv} ...")
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    *THEIRS_REQUIREMENTS], check=True)
    return command


def graph(size: int, cfg: float) -> dict[str, Any]:
    built = comfyui_cpu.txt2img_graph(SEED, "side-by-side/theirs", size)
    built["3"]["inputs"].update(steps=1, cfg=cfg)
    return built


def theirs_env(url: str, scratch: Path, size: int, cfg: float) -> dict[str, str]:
    workflow = scratch / "theirs-workflow.json"
    workflow.write_text(json.dumps(graph(size, cfg)))
    return c.loopback_env({"COMFY_URL": url, "COMFY_WORKFLOW_JSON_FILE": str(workflow),
                           "PROMPT_NODE_ID": "6", "OUTPUT_NODE_ID": "9"})


def ours_arguments(prompt: str, size: int, cfg: float) -> dict[str, Any]:
    return {"prompt": prompt, "negative_prompt": NEGATIVE, "width": size, "height": size,
            "steps": 1, "cfg": cfg, "seed": SEED}


def find_job(url: str, prompt: str) -> dict[str, Any]:
    """The history entry of the job whose positive prompt is ``prompt``."""
    status, body = comfyui_cpu.http_get(f"{url}/history?max_items=64")
    if status != 200:
        raise RuntimeError(f"GET /history -> {status}")
    for entry in json.loads(body).values():
        if entry["prompt"][2]["6"]["inputs"]["text"] == prompt:
            return entry
    raise RuntimeError(f"no job with prompt {prompt!r} in ComfyUI's history")


async def one_call(client: Any, url: str, arguments: dict[str, Any], calls: Calls,
                   tool: str) -> None:
    started = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    seconds = time.perf_counter() - started
    if result.is_error or not c.result_images(result):
        calls.failures.append(c.result_text(result)[:200])
        return
    begun, success = c.history_times(find_job(url, arguments["prompt"]))
    calls.call.append(seconds)
    calls.job.append(success - begun)
    calls.size.append(c.Wire.last.size)


async def measure(url: str, scratch: Path, runs: int, size: int,
                  cfg: float) -> dict[str, Calls]:
    results = {"comfy-mcp": Calls(), THEIRS: Calls()}
    ours_env = c.comfy_mcp_env(url, scratch / "out")
    with open(scratch / "servers.log", "w") as log:
        async with c.stdio_client(c.comfy_mcp_command(), ours_env, log) as ours, \
                c.stdio_client([str(ensure_venv())], theirs_env(url, scratch, size, cfg),
                               log) as theirs:
            for number in range(-1, runs):  # -1: warm-up (loads the checkpoint), not counted
                keep = Calls() if number < 0 else None
                prompt = f"a lighthouse at dusk, run {number} (ours)"
                await one_call(ours, url, ours_arguments(prompt, size, cfg),
                               keep or results["comfy-mcp"], "generate_art")
                prompt = f"a lighthouse at dusk, run {number} (theirs)"
                await one_call(theirs, url, {"prompt": prompt}, keep or results[THEIRS],
                               "generate_image")
                c.say(f"run {number + 1}/{runs} done")
    return results


def report(results: dict[str, Calls], runs: int, size: int, cfg: float) -> str:
    rows = []
    for name, calls in results.items():
        rows.append([name, len(calls.call), len(calls.failures), c.ms(c.median(calls.call)),
                     c.ms(c.median(calls.job)), c.ms(c.median(calls.overhead)),
                     c.ms(c.p90(calls.overhead)), f"{c.median(calls.size) / 1000:.0f} KB"])
    ours = c.median(results["comfy-mcp"].overhead)
    theirs = c.median(results[THEIRS].overhead)
    ratio = theirs / ours if ours > 0 else float("inf")
    lines = [
        "## 2. Side by side with comfy-mcp-server 0.1.11 (`bench/side_by_side.py`)", "",
        f"Run {c.stamp()}.", "",
        f"Real CPU ComfyUI 0.3.75, txt2img {size}x{size}, 1 step, cfg {cfg:g}, generated "
        f"checkpoint; the two servers called alternately, {runs} calls each after a warm-up; "
        "overhead = tool call time - ComfyUI's execution time (history timestamps).", "",
        c.table(["server", "n", "failures", "call ms", "ComfyUI job ms", "overhead ms (median)",
                 "overhead ms (p90)", "result size"], rows), "",
        f"Ratio of median overheads (theirs / ours): {ratio:.1f}x. Target: >= "
        f"{TARGET_RATIO:.0f}x: {c.verdict(ratio >= TARGET_RATIO)}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--size", type=int, default=64, help="image edge in pixels")
    parser.add_argument("--cfg", type=float, default=7.0)
    c.add_common_arguments(parser)
    args = parser.parse_args()
    c.apply_common_arguments(args)
    ensure_venv()
    install = comfyui_cpu.ensure_installed()
    with tempfile.TemporaryDirectory(prefix="comfy-mcp-bench-") as tmp:
        scratch = Path(tmp)
        c.say("starting the CPU ComfyUI on 127.0.0.1 ...")
        with comfyui_cpu.start_server(install, data_dir=scratch / "comfy") as server:
            results = anyio.run(measure, server.url, scratch, args.runs, args.size, args.cfg)
    body = report(results, args.runs, args.size, args.cfg)
    print(body)
    c.update_results("side_by_side", body)


if __name__ == "__main__":
    sys.exit(main())
