"""Shared pieces of the benchmarks: machine facts, statistics, tables, the results file,
and an MCP client over stdio that notes when each response line arrives and its size.

Benchmarks are run by hand (``.venv/bin/python bench/<name>.py``), never from pytest.
Everything they start listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
VENVS_DIR = REPO_DIR / ".cache" / "bench-venvs"  # git-ignored (.cache/)
PYTHON = sys.executable

# Import the helpers the project already has: the real CPU ComfyUI and the fake one.
for _folder in (REPO_DIR / "scripts", REPO_DIR / "tests"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# The order sections keep in RESULTS.md, whatever order the benchmarks run in.
SECTIONS = ("overhead", "side_by_side", "concurrency", "cold_start", "result_size", "soak")


# -- options every benchmark takes ------------------------------------------------------------


class Options:
    source: Path | None = None  # a checkout whose comfy_mcp is measured instead of ours
    write_results: bool = True


# -- statistics and tables ------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal, for tables."""
    if math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.2f}" if abs(value) < 1 else f"{value:.1f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, readable as plain text too."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# -- machine facts and the results file -------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision() -> str:
    """The commit the benchmark ran on, with ``+dirty`` when the tree has changes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True)
        return out.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "comfy_mcp")
    return revision + ("+dirty" if dirty else "")


def machine_line() -> str:
    cores = os.cpu_count() or 0
    python = platform.python_version()
    return f"{cpu_model()}, {cores} cores, Python {python}, {platform.system()} " \
           f"{platform.release()}"


def stamp() -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    code = f"commit {git_revision()}" if Options.source is None else f"source {Options.source}"
    load = os.getloadavg()[0]
    return f"{now}, {code}; {machine_line()}; load average {load:.2f} at the end"


def _split_sections(text: str) -> dict[str, str]:
    pattern = re.compile(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", re.S)
    return {match.group(1): match.group(2) for match in pattern.finditer(text)}


def update_results(section: str, body: str) -> None:
    """Replace one benchmark's section of RESULTS.md, keeping the others as they were."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    if not Options.write_results:
        print(f"\n(--no-results: section {section!r} of RESULTS.md left as it was)")
        return
    old = RESULTS.read_text() if RESULTS.exists() else ""
    sections = _split_sections(old)
    sections[section] = body.rstrip("\n") + "\n"
    parts = [
        "# Benchmark results\n",
        "Written by the scripts in `bench/` (see `bench/README.md`); each section is "
        "replaced when its benchmark runs again, so a regression shows in `git diff`.\n",
        f"Machine of the last run: {machine_line()}.\n",
    ]
    for name in SECTIONS:
        if name in sections:
            parts.append(f"<!-- bench:{name} -->\n{sections[name]}<!-- /bench:{name} -->\n")
    RESULTS.write_text("\n".join(parts))
    print(f"\nwrote section {section!r} of {RESULTS.relative_to(REPO_DIR)}")


# -- environment for child processes ------------------------------------------------------------

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


def loopback_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without proxy settings, so children only ever talk to 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    env.update(extra)
    return env


def comfy_mcp_env(url: str, output_dir: Path, workflows_dir: Path | None = None,
                  **extra: str) -> dict[str, str]:
    env = {"COMFYUI_URL": url, "COMFY_MCP_OUTPUT_DIR": str(output_dir),
           "COMFY_MCP_LOG_LEVEL": "WARNING", **extra}
    if workflows_dir is not None:
        env["COMFY_MCP_WORKFLOWS_DIR"] = str(workflows_dir)
    if Options.source is not None:
        env["PYTHONPATH"] = str(Options.source)
    return loopback_env(env)


def add_common_arguments(parser: Any) -> None:
    parser.add_argument("--source", type=Path, help="measure the comfy_mcp package of this "
                        "checkout (e.g. a prototype worktree) instead of the installed one")
    parser.add_argument("--no-results", action="store_true",
                        help="print the tables but leave RESULTS.md alone")


def apply_common_arguments(args: Any) -> None:
    Options.write_results = not args.no_results
    if args.source is not None:
        Options.source = args.source.resolve()
        if not (Options.source / "comfy_mcp").is_dir():
            raise SystemExit(f"{Options.source} has no comfy_mcp package")
        sys.path.insert(0, str(Options.source))


# -- an MCP client that times the wire --------------------------------------------------------


_PROMPT_ID = re.compile(r"prompt_id: ([0-9a-f-]{36})")


@dataclass
class Arrival:
    """When a JSON-RPC response line was fully read by the client, and its length."""

    at: float  # time.time(), the clock ComfyUI's history timestamps use
    size: int  # bytes of the line, without the newline
    request_id: Any


class Wire:
    """Records every response line the SDK's stdio client reads (all clients in-process)."""

    last: Arrival | None = None
    lines = 0  # every line read, responses and notifications
    notifications: dict[str, int] = {}  # method -> count
    by_prompt: dict[str, float] = {}  # prompt id named in a tool result -> when it was read
    _installed = False

    @classmethod
    def install(cls) -> None:
        """Wrap the SDK's stdio line parser; the time is taken before parsing."""
        if cls._installed:
            return
        from mcp.client import stdio

        parse = stdio._parse_line

        def timed_parse(line: str) -> Any:
            at = time.time()
            parsed = parse(line)
            message = getattr(parsed, "message", None)
            cls.lines += 1
            method = getattr(message, "method", None)
            if method is not None:
                cls.notifications[method] = cls.notifications.get(method, 0) + 1
            if hasattr(message, "result") or hasattr(message, "error"):
                size = len(line.encode("utf-8"))
                cls.last = Arrival(at, size, getattr(message, "id", None))
                named = _PROMPT_ID.search(line)
                if named is not None:
                    cls.by_prompt[named.group(1)] = at
            return parsed

        stdio._parse_line = timed_parse
        cls._installed = True


@contextlib.asynccontextmanager
async def stdio_client(command: Sequence[str], env: Mapping[str, str],
                       log: TextIO | None = None) -> AsyncIterator[Any]:
    """An initialised ``mcp.Client`` talking to ``command`` over its stdin/stdout."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client as transport

    Wire.install()
    # cwd: not the repository, whose comfy_mcp/ would shadow a --source checkout
    params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(env),
                                   cwd=str(BENCH_DIR))
    errlog = log or sys.stderr
    async with Client(transport(params, errlog=errlog), read_timeout_seconds=900) as client:
        # As every real client does first. Without it the SDK's call_tool lists the tools
        # after each result until one listing has arrived (to check output schemas), which
        # puts one tools/list per call in flight when many calls run at once.
        await client.list_tools()
        yield client


def comfy_mcp_command() -> list[str]:
    return [PYTHON, "-m", "comfy_mcp"]


def children_matching(needle: str) -> list[int]:
    """Pids of this process's direct children whose command line contains ``needle``."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if int(fields[1]) == me and needle in cmdline:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmHWM`` (peak RSS)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


# -- results as an assistant sees them ----------------------------------------------------------


def result_text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def result_images(result: Any) -> list[bytes]:
    import base64

    return [base64.b64decode(c.data) for c in result.content if getattr(c, "type", "") == "image"]


def prompt_id_of(result: Any) -> str:
    match = re.search(r"prompt_id: (\S+)", result_text(result))
    if match is None or result.is_error:
        raise RuntimeError(f"tool call failed: {result_text(result)[:500]}")
    return match.group(1)


def saved_paths(result: Any) -> list[Path]:
    return [Path(p) for p in re.findall(r"^\s+\d+\. (/\S+)", result_text(result), re.M)]


# -- ComfyUI's own timestamps -------------------------------------------------------------------


def history_times(entry: Mapping[str, Any]) -> tuple[float, float]:
    """``execution_start`` and ``execution_success`` of a history entry, in seconds."""
    stamps = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
    return stamps["execution_start"] / 1000, stamps["execution_success"] / 1000


def fetch_history(url: str, prompt_id: str) -> dict[str, Any]:
    import comfyui_cpu

    status, body = comfyui_cpu.http_get(f"{url}/history/{prompt_id}")
    if status != 200:
        raise RuntimeError(f"GET /history/{prompt_id} -> {status}")
    return json.loads(body)[prompt_id]


# -- templates the benchmarks use ---------------------------------------------------------------

BLANK_TEMPLATE: dict[str, Any] = {
    "description": "Benchmark: a one-colour image (EmptyImage -> SaveImage), no model. The "
                   "seed is the colour, so every seed is a new image; the prompt is the file "
                   "name prefix.",
    "parameters": {
        "prompt": {"type": "string", "bind": ["2.filename_prefix"]},
        "width": {"type": "int", "default": 512, "min": 8, "max": 8192, "step": 8,
                  "bind": ["1.width"]},
        "height": {"type": "int", "default": 512, "min": 8, "max": 8192, "step": 8,
                   "bind": ["1.height"]},
        "batch_size": {"type": "int", "default": 1, "min": 1, "max": 64,
                       "bind": ["1.batch_size"]},
        "seed": {"type": "seed", "bind": ["1.color"]},
    },
    "graph": {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "bench", "images": ["1", 0]}},
    },
}


LOAD_TEMPLATE: dict[str, Any] = {
    "description": "Benchmark: re-save an uploaded image (LoadImage -> SaveImage), no model. "
                   "The prompt is the file name prefix: a new prefix makes a new job.",
    "parameters": {
        "prompt": {"type": "string", "bind": ["2.filename_prefix"]},
        "image": {"type": "string", "bind": ["1.image"]},
    },
    "graph": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "bench", "images": ["1", 0]}},
    },
}


def write_templates(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_blank.json").write_text(json.dumps(BLANK_TEMPLATE, indent=1))
    (folder / "bench_load.json").write_text(json.dumps(LOAD_TEMPLATE, indent=1))
    return folder


def photo_png(seed: int, edge: int) -> bytes:
    """A PNG that compresses like a photo or an SD render (about 2/3 of its raw size):
    smooth colour fields plus grain, saved as ComfyUI saves (compress_level 4)."""
    import io
    import random

    from PIL import Image, ImageChops

    rng = random.Random(seed)
    base = Image.frombytes("RGB", (12, 12), rng.randbytes(12 * 12 * 3))
    base = base.resize((edge, edge), Image.Resampling.BICUBIC)
    grain = Image.effect_noise((edge, edge), 8).convert("RGB")
    buffer = io.BytesIO()
    ImageChops.add(base, grain, 1.0, -128).save(buffer, "PNG", compress_level=4)
    return buffer.getvalue()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
