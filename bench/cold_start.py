"""Cold start: process spawn to the MCP ``initialize`` answer and to the ``tools/list`` answer.

Measures ``python -m comfy_mcp`` (pointed at the fake ComfyUI of tests/fakecomfy.py, which
runs in this process on 127.0.0.1) and an empty ``MCPServer("empty")`` on the same SDK and
interpreter, alternating, so both see the same machine load. The client is a bare JSON-RPC
writer/reader on the pipes: ``initialize`` is written right after the spawn (clients do
that; the pipe holds it), ``tools/list`` right after the answer. Then ``python -X importtime``
shows which imports the difference is made of.

    .venv/bin/python bench/cold_start.py [--runs 10] [--also DIR] [--source DIR] [--no-results]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import _common as c
import anyio
from anyio.abc import Process
from fakecomfy import FakeComfy
from mcp_types.version import LATEST_HANDSHAKE_VERSION

TARGET_MS = 100.0
EMPTY_SERVER = "from mcp.server import MCPServer\nMCPServer('empty').run()\n"
OURS_IMPORT = "import comfy_mcp.cli, comfy_mcp.server"
EMPTY_IMPORT = "import mcp.server"


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return (json.dumps(message) + "\n").encode()


INITIALIZE = request(1, "initialize", {
    "protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
    "clientInfo": {"name": "comfy-mcp-bench", "version": "0"},
})
INITIALIZED = b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n'
TOOLS_LIST = request(2, "tools/list")


class Lines:
    """Reads newline-terminated JSON-RPC messages from a process's stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.buffer = b""

    async def answer(self, request_id: int) -> dict[str, Any]:
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(line)
                if message.get("id") == request_id:
                    return message
            assert self.process.stdout is not None
            self.buffer += await self.process.stdout.receive()


async def one_start(command: list[str], env: dict[str, str], log: Any) -> tuple[float, float, int]:
    """Seconds from spawn to the initialize answer and to the tools/list answer; tool count."""
    started = time.perf_counter()
    process = await anyio.open_process(command, env=env, stderr=log, cwd=c.BENCH_DIR)
    try:
        assert process.stdin is not None
        await process.stdin.send(INITIALIZE)
        lines = Lines(process)
        reply = await lines.answer(1)
        initialized = time.perf_counter()
        if "result" not in reply:
            raise RuntimeError(f"initialize failed: {reply}")
        await process.stdin.send(INITIALIZED + TOOLS_LIST)
        tools = (await lines.answer(2))["result"]["tools"]
        listed = time.perf_counter()
    finally:
        await stop(process)
    return initialized - started, listed - started, len(tools)


async def stop(process: Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with anyio.move_on_after(5):
        await process.wait()
        return
    process.terminate()
    with anyio.move_on_after(5):
        await process.wait()
        return
    process.kill()


# -- which imports make the difference ----------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def run_python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([c.PYTHON, *args], capture_output=True, text=True, check=True,
                          env=env, cwd=c.BENCH_DIR)


def import_times(code: str, env: dict[str, str], repeats: int = 3) -> dict[str, float]:
    """Median self time (seconds) of each module imported by ``code``."""
    samples: dict[str, list[float]] = defaultdict(list)
    run_python(["-c", code], env)  # write the bytecode first
    for _ in range(repeats):
        out = run_python(["-X", "importtime", "-c", code], env)
        for match in _IMPORT_LINE.finditer(out.stderr):
            samples[match.group(4)].append(int(match.group(1)) / 1e6)
    return {module: c.median(values) for module, values in samples.items()}


def extra_imports(ours: dict[str, float], empty: dict[str, float]) -> dict[str, float]:
    """Self time per top-level package of the modules only ``ours`` imports."""
    packages: dict[str, float] = defaultdict(float)
    for module, seconds in ours.items():
        if module not in empty:
            packages[module.split(".")[0]] += seconds
    return dict(sorted(packages.items(), key=lambda item: -item[1]))


def build_cost(env: dict[str, str]) -> dict[str, float]:
    """In one fresh process: seconds to import comfy_mcp's server and to build the server."""
    code = (
        "import time, json\n"
        "t0 = time.perf_counter()\n"
        "import comfy_mcp.cli\n"
        "from comfy_mcp.server import build_server\n"
        "from comfy_mcp.config import Settings\n"
        "t1 = time.perf_counter()\n"
        "build_server(Settings(comfyui_url='http://127.0.0.1:9'))\n"
        "t2 = time.perf_counter()\n"
        "print(json.dumps({'import': t1 - t0, 'build_server': t2 - t1}))\n"
    )
    runs = [json.loads(run_python(["-c", code], env).stdout) for _ in range(6)][1:]
    return {key: c.median([run[key] for run in runs]) for key in runs[0]}


# -- where start-up time goes, in one comfy-mcp process ------------------------------------------

STAGED_SERVER = r"""
import os, sys, time
T0 = float(os.environ["BENCH_T0"])
def mark(what):
    sys.stderr.write("STAGE %.1f %s\n" % (1000 * (time.time() - T0), what))
    sys.stderr.flush()
def around(owner, name, label):
    fn = getattr(owner, name, None)
    if fn is None:
        return
    if hasattr(fn, "__code__") and fn.__code__.co_flags & 0x80:  # a coroutine function
        async def wrapped(*args, **kwargs):
            result = await fn(*args, **kwargs)
            mark(label)
            return result
    else:
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            mark(label)
            return result
    setattr(owner, name, wrapped)
mark("interpreter started")
import comfy_mcp.cli as cli
import comfy_mcp.server as server
mark("comfy_mcp imported (with the MCP SDK)")
import comfy_mcp.client as client
around(server, "build_server", "build_server() done")
for module in ("studio", "memory"):
    try:
        around(__import__("comfy_mcp." + module, fromlist=["x"]), "_open_store",
               "lifespan: history store opened")
    except ImportError:
        pass
around(client.ComfyClient, "__init__", "lifespan: HTTP client created")
cli.main()
"""


async def staged_start(env: dict[str, str], log: Any) -> list[tuple[float, str]]:
    """One start of comfy-mcp with marks; returns (ms after spawn, stage) in order."""
    started = time.time()
    command = [c.PYTHON, "-c", STAGED_SERVER]
    process = await anyio.open_process(command, env={**env, "BENCH_T0": repr(started)},
                                       cwd=c.BENCH_DIR)
    assert process.stdin is not None and process.stderr is not None
    await process.stdin.send(INITIALIZE)
    await Lines(process).answer(1)
    answered = (time.time() - started) * 1000
    await stop(process)
    text = b"".join([chunk async for chunk in process.stderr]).decode()
    stages = []
    for line in text.splitlines():
        if line.startswith("STAGE "):
            _, at, what = line.split(" ", 2)
            stages.append((float(at), what))
    log.write(text)
    return stages + [(answered, "initialize answered")]


async def stage_table(env: dict[str, str], scratch: Path, runs: int = 5) -> str:
    samples: dict[str, list[float]] = defaultdict(list)
    with open(scratch / "staged.log", "w") as log:
        await staged_start(env, log)  # bytecode
        for _ in range(runs):
            for at, what in await staged_start(env, log):
                samples[what].append(at / 1000)
    rows = [[what, c.ms(c.median(times))] for what, times in samples.items()]
    return c.table([f"stage (median of {runs})", "ms after spawn"], rows)


# -- main -------------------------------------------------------------------------------------


def compiled(env: dict[str, str], scratch: Path) -> dict[str, str]:
    """``env`` with bytecode written and reused (in the scratch folder), as after a pip
    install; this environment sets PYTHONDONTWRITEBYTECODE, so a checkout compiles each time."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


def no_bytecode(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}


async def measure(runs: int, scratch: Path,
                  also: Path | None = None) -> dict[str, list[tuple[float, float, int]]]:
    async with FakeComfy.serve() as fake:
        ours_env = c.comfy_mcp_env(fake.url, scratch / "out")
        commands = {
            "empty": ([c.PYTHON, "-c", EMPTY_SERVER], compiled(c.loopback_env({}), scratch)),
            "comfy-mcp": (c.comfy_mcp_command(), compiled(ours_env, scratch)),
            "comfy-mcp, no bytecode": (c.comfy_mcp_command(), no_bytecode(ours_env)),
        }
        if also is not None:
            other = compiled({**ours_env, "PYTHONPATH": str(also.resolve())}, scratch)
            commands[f"comfy-mcp from {also}"] = (c.comfy_mcp_command(), other)
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
        with open(scratch / "servers.log", "w") as log:
            for command, env in commands.values():  # writes the bytecode, warms the cache
                await one_start(command, env, log)
            for _ in range(runs):
                for name, (command, env) in commands.items():
                    results[name].append(await one_start(command, env, log))
    return results


def report(results: dict[str, list[tuple[float, float, int]]], packages: dict[str, float],
           build: dict[str, float], runs: int, stages: str) -> str:
    rows = []
    for name, samples in results.items():
        init = [s[0] for s in samples]
        listed = [s[1] for s in samples]
        rows.append([name, samples[0][2], c.ms(c.median(init)), c.ms(c.p90(init)),
                     c.ms(c.median(listed)), c.ms(c.p90(listed))])
    ours, empty = results["comfy-mcp"], results["empty"]
    source = results["comfy-mcp, no bytecode"]
    compile_cost = c.median([s[0] for s in source]) - c.median([s[0] for s in ours])
    gaps = {label: c.median([s[i] for s in ours]) - c.median([s[i] for s in empty])
            for i, label in ((0, "initialize"), (1, "tools/list"))}
    rows.append(["comfy-mcp - empty", "", c.ms(gaps["initialize"]), "",
                 c.ms(gaps["tools/list"]), ""])
    worst = max(gaps.values()) * 1000
    top = [[package, c.ms(seconds)] for package, seconds in list(packages.items())[:12]]
    lines = [
        "## 4. Cold start (`bench/cold_start.py`)", "", f"Run {c.stamp()}.", "",
        f"Spawn to answer, medians of {runs} alternating starts; comfy-mcp points at the fake "
        "ComfyUI (running), the empty server is `MCPServer(\"empty\").run()` on the same SDK. "
        "Both run with their bytecode cached, as after `pip install`; the third row is this "
        "checkout as this environment runs it (PYTHONDONTWRITEBYTECODE=1: comfy_mcp's "
        f"modules are compiled at every start, {c.ms(compile_cost)} ms here).", "",
        c.table(["server", "tools", "initialize ms", "p90", "tools/list ms", "p90"], rows), "",
        f"Target: within {TARGET_MS:.0f} ms of the empty server: {worst:.0f} ms, "
        f"{c.verdict(worst <= TARGET_MS)}"
        + (f" by {worst - TARGET_MS:.0f} ms." if worst > TARGET_MS else "."), "",
        f"In one process: importing comfy-mcp's CLI and server takes "
        f"{c.ms(build['import'])} ms, `build_server()` {c.ms(build['build_server'])} ms. "
        "Where a start goes (comfy-mcp with marks around each step; the ComfyUI URL is a "
        "closed port):", "", stages, "",
        "Imports only comfy-mcp makes (`python -X importtime`, self time summed per top-level "
        f"package, median of 3; total {c.ms(sum(packages.values()))} ms):", "",
        c.table(["package", "ms"], top),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--also", type=Path, help="add a row for the comfy_mcp of this "
                        "checkout (e.g. a prototype), measured in the same run")
    c.add_common_arguments(parser)
    args = parser.parse_args()
    c.apply_common_arguments(args)
    with tempfile.TemporaryDirectory(prefix="comfy-mcp-bench-") as tmp:
        scratch = Path(tmp)
        results = anyio.run(measure, args.runs, scratch, args.also)
        c.say("python -X importtime ...")
        env = compiled(c.comfy_mcp_env("http://127.0.0.1:9", scratch / "out"), scratch)
        packages = extra_imports(import_times(OURS_IMPORT, env), import_times(EMPTY_IMPORT, env))
        build = build_cost(env)
        stages = anyio.run(stage_table, env, scratch)
    body = report(results, packages, build, args.runs, stages)
    print(body)
    c.update_results("cold_start", body)


if __name__ == "__main__":
    sys.exit(main())
