"""Soak: many jobs through one comfy-mcp against the fake ComfyUI, with random faults.

    .venv/bin/python bench/soak.py [--jobs 1000] [--concurrency 12] [--seed 1]
                                   [--via service|mcp] [--wait 20] [--details]
                                   [--samples 4] [--tracemalloc N]

The fake ComfyUI (tests/fakecomfy.py) runs in a child process on 127.0.0.1, so the
memory figures are comfy-mcp's alone. The child also injects the faults, one every
few submitted jobs on average: WebSocket drops and refused reconnects, slow replies,
502 pages from a "proxy", 500s, out-of-memory errors, interrupts by "another user",
and restarts (with and without downtime). The parent runs the jobs through one
ComfyService (``--via service``) or through the MCP server in-process (``--via mcp``),
at most ``--concurrency`` at once, and checks afterwards:

* every job is accounted for: images, or a specific error; none outlived its wait limit
  (plus a grace for the requests around the wait) and none raised anything unexpected;
  after a failed job its slot pauses 0.5 s, as an assistant reading the error would;
* each saved image has the colour its own seed gives (no crossed results, B10);
* no job is still registered with the service or the event stream;
* RSS at start, at each quarter (``--samples``), and at the end (VmRSS from
  /proc/self/status); ``--tracemalloc N`` also lists where Python memory grew from job
  N to the end;
* WebSocket connections opened (``service.stream.connections``), and from the fake's
  side: sockets accepted, distinct client ids, most open at once.

Nothing listens anywhere but 127.0.0.1. Run by hand, not from pytest.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

HTTP_TIMEOUT = 5.0
# The wait limit bounds following the job; checking the graph before it, the last poll
# and saving after it add a few requests, each bounded by the HTTP timeout. A job that
# outlives its wait limit by more than this counts as hung.
GRACE = 3 * HTTP_TIMEOUT + 5.0


# -- the fake ComfyUI and its chaos, in the child process -------------------------------------


@dataclass
class Chaos:
    """Random faults, each after a random pause; counts what it did."""

    fake: Any
    rng: random.Random
    jobs_per_fault: int = 5
    counts: Counter[str] = field(default_factory=Counter)
    max_sockets: int = 0
    _seen_upto: int = 0
    _seen_prompts: int = 0

    async def run(self) -> None:
        import httpx
        from fakecomfy import Failure, Fault

        faults: list[tuple[float, Callable[[], Awaitable[None]]]] = []

        async def ws_drop() -> None:
            for sock in list(self.fake._sockets):  # a dead link: no close frame
                self.fake._drop(sock)

        async def ws_drop_mid_job() -> None:
            self.fake.script.drop_ws_after = self.rng.choice(["execution_start", "progress",
                                                              "executed"])
            await anyio.sleep(self.rng.uniform(0.1, 0.5))
            self.fake.script.drop_ws_after = None

        async def ws_refused() -> None:
            self.fake.script.refuse_ws = True
            await ws_drop()
            await anyio.sleep(self.rng.uniform(0.3, 1.5))
            self.fake.script.refuse_ws = False

        async def slow() -> None:
            route = self.rng.choice([("GET", "/history"), ("GET", "/queue"),
                                     ("POST", "/prompt"), ("GET", "/view")])
            after = route == ("POST", "/prompt") and self.rng.random() < 0.5
            fault = Fault.slow(self.rng.uniform(0.2, 2.5), after=after)
            self.fake.fault(*route, fault, times=self.rng.randint(1, 3))

        async def bad_gateway() -> None:
            route = self.rng.choice([("GET", "/history"), ("GET", "/queue"),
                                     ("POST", "/prompt"), ("GET", "/view"),
                                     ("GET", "/object_info")])
            fault = Fault.bad_gateway() if self.rng.random() < 0.7 else Fault.server_error()
            self.fake.fault(*route, fault, times=self.rng.randint(1, 2))

        async def oom() -> None:
            self.fake.script.failure = Failure.oom("3")
            await anyio.sleep(self.rng.uniform(0.02, 0.15))
            self.fake.script.failure = None

        async def interrupt() -> None:  # another user presses Cancel
            async with httpx.AsyncClient(trust_env=False) as http:
                await http.post(self.fake.url + "/interrupt", json={})

        async def restart() -> None:
            downtime = self.rng.choice([None, None, 0.3, 1.0])
            await self.fake.restart(downtime)

        faults = [(3, ws_drop), (2, ws_drop_mid_job), (1, ws_refused), (4, slow),
                  (4, bad_gateway), (3, oom), (3, interrupt), (0.4, restart)]
        weights = [weight for weight, _ in faults]
        # One fault per few submitted jobs (not per second), so the density of faults
        # per job is the same however fast or slow the jobs run.
        due = self.rng.randint(1, 2 * self.jobs_per_fault)
        while True:
            await anyio.sleep(0.02)
            if self.submitted() < due:
                continue
            due += self.rng.randint(1, 2 * self.jobs_per_fault)
            _, action = self.rng.choices(faults, weights)[0]
            self.counts[action.__name__] += 1
            await action()

    def submitted(self) -> int:
        seen = self.fake.seen
        self._seen_prompts += sum(1 for s in seen[self._seen_upto:]
                                  if s.method == "POST" and s.path == "/prompt")
        self._seen_upto = len(seen)
        return self._seen_prompts

    async def watch_sockets(self) -> None:
        while True:
            self.max_sockets = max(self.max_sockets, len(self.fake._sockets))
            await anyio.sleep(0.01)


async def serve_fake(seed: int) -> None:
    """Child: serve the fake on 127.0.0.1, print its port, inject faults until stdin ends."""
    from fakecomfy import FakeComfy, Script

    async with FakeComfy.serve(Script(duration=0.02, steps=2)) as fake:
        chaos = Chaos(fake, random.Random(seed))
        print(f"PORT {fake.port}", flush=True)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(chaos.watch_sockets)
            go = anyio.Event()

            async def on_go() -> None:
                await go.wait()
                await chaos.run()

            tasks.start_soon(on_go)
            stdin = anyio.wrap_file(sys.stdin)
            async for line in stdin:
                if line.strip() == "GO":
                    go.set()
                elif line.strip() == "STOP":
                    break
            tasks.cancel_scope.cancel()
        report = {"faults": dict(chaos.counts), "ws_accepted": len(fake.ws_clients),
                  "ws_client_ids": len(set(fake.ws_clients)),
                  "max_open_sockets": chaos.max_sockets, "jobs_started": len(fake.started)}
        print("REPORT " + json.dumps(report), flush=True)


# -- the jobs, in the parent process -----------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def expected_colour(seed: int) -> tuple[int, int, int]:
    number = random.Random(seed).randrange(0x1000000)  # as the fake's KSampler does
    return (number >> 16) & 255, (number >> 8) & 255, number & 255


@dataclass
class Outcome:
    index: int
    kind: str  # "images", an error class name, "unexpected:<class>" or "hung"
    seconds: float
    crossed: bool = False
    detail: str = ""


@dataclass
class Soak:
    jobs: int
    concurrency: int
    wait: float
    via: str
    trace: int = 0  # with tracemalloc: compare memory after this many jobs with the end
    samples: int = 4  # RSS readings split the soak into this many parts
    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[str, int]] = field(default_factory=list)
    snapshot: Any = None
    growth: list[str] = field(default_factory=list)

    async def run(self, url: str, out: Path, started: Callable[[], None]) -> dict[str, Any]:
        from comfy_mcp.config import Settings

        settings = Settings(comfyui_url=url, output_dir=out, http_timeout=HTTP_TIMEOUT,
                            wait_limit=self.wait, poll_interval=0.2, db_path=None)
        if self.via == "mcp":
            return await self._via_mcp(settings, started)
        return await self._via_service(settings, started)

    async def _via_service(self, settings: Any, started: Callable[[], None]) -> dict[str, Any]:
        from comfy_mcp.service import ComfyService

        async with ComfyService.open(settings) as service:
            async def one(seed: int) -> str:
                params = {"prompt": f"soak {seed}", "seed": seed, "width": 64, "height": 64,
                          "steps": 2}
                gen = await service.generate("txt2img", params, wait_limit=self.wait)
                unsaved = [f.error for f in gen.files if f.path is None]
                if unsaved:
                    raise _NotSaved("; ".join(str(e) for e in unsaved))
                return self._check_files([f.path for f in gen.files if f.path], seed)

            await self._all(one, started)
            leaks = {"watches": len(service._watches),
                     "subscribers": len(service.stream._subscribers) if service.stream else 0}
            return {"ws_opened": service.stream.connections if service.stream else 0,
                    "leaks": leaks}

    async def _via_mcp(self, settings: Any, started: Callable[[], None]) -> dict[str, Any]:
        from mcp import Client

        from comfy_mcp.server import build_server

        async with Client(build_server(settings)) as client:
            async def one(seed: int) -> str:
                result = await client.call_tool("generate_art", {
                    "prompt": f"soak {seed}", "seed": seed, "width": 64, "height": 64,
                    "steps": 2, "wait_seconds": self.wait})
                text = "\n".join(getattr(c, "text", "") for c in result.content)
                if result.is_error:
                    raise _ToolFailed(text)
                paths = [Path(m[1]) for m in _SAVED_LINE.finditer(text)]
                if "NOT SAVED: " in text:
                    raise _NotSaved(text[-200:])
                return self._check_files(paths, seed)

            await self._all(one, started)
        return {"ws_opened": None, "leaks": {}}

    def _check_files(self, paths: list[Path], seed: int) -> str:
        from PIL import Image

        if not paths:
            return "images-missing"
        for path in paths:
            with Image.open(path) as image:
                if image.convert("RGB").getpixel((0, 0)) != expected_colour(seed):
                    return "crossed"
        return "images"

    async def _all(self, one: Callable[[int], Awaitable[str]], started: Callable[[], None]) -> None:
        limiter = anyio.CapacityLimiter(self.concurrency)
        marks = {self.jobs * q // self.samples for q in range(1, self.samples)}
        done = 0

        async def job(index: int) -> None:
            nonlocal done
            seed = 1_000_000 + index
            async with limiter:
                begun = time.perf_counter()
                kind, detail = "hung", ""
                with anyio.move_on_after(self.wait + GRACE):
                    try:
                        kind = await one(seed)
                    except Exception as exc:  # noqa: BLE001 - classified below
                        kind, detail = _classify(exc)
                seconds = time.perf_counter() - begun
                self.outcomes.append(Outcome(index, kind, seconds, kind == "crossed", detail))
                if kind != "images":
                    # An assistant reads the error before trying again; without this
                    # pause one second of downtime fails hundreds of jobs in a row.
                    await anyio.sleep(0.5)
            done += 1
            if done in marks:
                gc.collect()
                self.rss.append((f"after {done} jobs", rss_kib()))
            if self.trace and done == self.trace:
                gc.collect()
                self.snapshot = tracemalloc.take_snapshot()

        gc.collect()
        self.rss.append(("start", rss_kib()))
        started()
        async with anyio.create_task_group() as tasks:
            for index in range(self.jobs):
                tasks.start_soon(job, index)
        gc.collect()
        self.rss.append(("end", rss_kib()))
        if self.trace and self.snapshot is not None:
            growth = tracemalloc.take_snapshot().compare_to(self.snapshot, "lineno")
            net = sum(stat.size_diff for stat in growth)
            grown = [stat for stat in growth if stat.size_diff > 0]
            self.growth = [f"net Python allocations from job {self.trace} to the end: "
                           f"{net / 1024:+.0f} KiB"]
            self.growth += [str(stat) for stat in grown[:8]]


# "  1. /abs/path/name.png (64x64)" in generate_art's text
_SAVED_LINE = re.compile(r"^\s*\d+\. (/.+?)(?: \(\d+x\d+\))?$", re.MULTILINE)


class _NotSaved(Exception):
    """The job finished but an output could not be fetched or saved (the message says why)."""


class _ToolFailed(Exception):
    """An is_error result from the MCP server (its text says which error)."""


_MCP_KINDS = [  # phrases of comfy_mcp.errors messages, for results read over MCP
    ("ran out of memory", "OutOfMemory"), ("was interrupted", "JobInterrupted"),
    ("job was lost", "JobLost"), ("Lost contact", "ContactLost"),
    ("is still", "JobStillRunning"), ("not reachable", "ComfyUnreachable"),
    ("did not answer within", "ComfyTimeout"), ("HTTP 5", "ComfyHTTPError"),
    ("no outputs", "NoOutputs"), ("The job failed", "JobFailed"),
]


def _classify(exc: Exception) -> tuple[str, str]:
    from comfy_mcp.errors import ComfyError

    if isinstance(exc, _ToolFailed):
        text = str(exc)
        if text.strip() in ("Error executing tool generate_art", ""):
            return "unexpected:bare-tool-error", text
        for phrase, kind in _MCP_KINDS:
            if phrase in text:
                return kind, text[:200]
        return "other-tool-error", text[:200]
    if isinstance(exc, _NotSaved):
        return "finished, file not saved", str(exc)[:200]
    if isinstance(exc, ComfyError):
        return type(exc).__name__, str(exc)[:200]
    return f"unexpected:{type(exc).__name__}", repr(exc)[:200]


# -- report ----------------------------------------------------------------------------------


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def report(soak: Soak, extra: dict[str, Any], fake: dict[str, Any], seconds: float) -> str:
    kinds = Counter(o.kind for o in soak.outcomes)
    longest = max((o.seconds for o in soak.outcomes), default=0.0)
    rows = [
        ("jobs", f"{soak.jobs} via {soak.via}, {soak.concurrency} at once, wait limit "
                 f"{soak.wait:g} s"),
        ("accounted for", f"{len(soak.outcomes)} of {soak.jobs}"),
    ]
    rows += [(f"  {kind}", str(count)) for kind, count in kinds.most_common()]
    rows += [
        (f"hung (past wait limit + {GRACE:g} s)", str(kinds.get("hung", 0))),
        ("returned after the wait limit", str(sum(o.seconds > soak.wait
                                                  for o in soak.outcomes))),
        ("unexpected exceptions", str(sum(c for k, c in kinds.items()
                                          if k.startswith("unexpected")))),
        ("crossed results (wrong colour)", str(kinds.get("crossed", 0))),
        ("longest job", f"{longest:.1f} s"),
        ("total time", f"{seconds:.1f} s ({soak.jobs / seconds:.1f} jobs/s)"),
    ]
    rows += [(f"RSS {label}", f"{kib / 1024:.1f} MiB") for label, kib in soak.rss]
    if len(soak.rss) >= 2:
        rows.append(("RSS growth start→end",
                     f"{(soak.rss[-1][1] - soak.rss[0][1]) / 1024:+.1f} MiB"))
    if extra.get("ws_opened") is not None:
        rows.append(("WebSocket connections opened (client)", str(extra["ws_opened"])))
    rows += [
        ("WebSockets accepted (fake)", str(fake.get("ws_accepted", "?"))),
        ("distinct WebSocket client ids", str(fake.get("ws_client_ids", "?"))),
        ("most WebSockets open at once", str(fake.get("max_open_sockets", "?"))),
        ("jobs ComfyUI started", str(fake.get("jobs_started", "?"))),
    ]
    if extra.get("leaks"):
        rows.append(("left registered after the soak", ", ".join(
            f"{k} {v}" for k, v in extra["leaks"].items())))
    faults = fake.get("faults", {})
    rows.append(("faults injected", f"{sum(faults.values())}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(faults.items()))))
    return table(rows)


async def main_async(args: argparse.Namespace) -> int:
    child = subprocess.Popen(
        [sys.executable, __file__, "--fake-server", "--seed", str(args.seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        stderr=None if args.details else subprocess.DEVNULL)
    assert child.stdin is not None and child.stdout is not None
    try:
        first = child.stdout.readline().split()
        if first[:1] != ["PORT"]:
            raise SystemExit("the fake ComfyUI did not start")
        url = f"http://127.0.0.1:{first[1]}"
        soak = Soak(args.jobs, args.concurrency, args.wait, args.via, args.tracemalloc,
                    args.samples)
        if args.tracemalloc:
            tracemalloc.start(1)

        def go() -> None:
            child.stdin.write("GO\n")
            child.stdin.flush()

        with tempfile.TemporaryDirectory(prefix="comfy-soak-") as folder:
            begun = time.perf_counter()
            extra = await soak.run(url, Path(folder) / "out", go)
            seconds = time.perf_counter() - begun
        child.stdin.write("STOP\n")
        child.stdin.flush()
        fake: dict[str, Any] = {}
        for line in child.stdout:
            if line.startswith("REPORT "):
                fake = json.loads(line[7:])
        child.wait(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
    table_text = report(soak, extra, fake, seconds)
    print(table_text)
    if soak.jobs >= 1000:  # the figure; shorter runs are for trying things out
        import _common

        _common.update_results("soak", f"## 6. Soak (`bench/soak.py`)\n\n"
                               f"Run {_common.stamp()}.\n\n{table_text}\n")
    for line in soak.growth:
        print("grew:", line)
    if args.details:
        for outcome in soak.outcomes:
            if outcome.kind not in ("images",):
                print(f"job {outcome.index}: {outcome.kind} after {outcome.seconds:.1f} s: "
                      f"{outcome.detail}")
    bad = [o for o in soak.outcomes if o.kind == "hung" or o.kind.startswith("unexpected")
           or o.crossed or o.kind == "images-missing"]
    return 1 if bad or len(soak.outcomes) != soak.jobs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--wait", type=float, default=20.0, help="wait limit per job (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--via", choices=("service", "mcp"), default="service")
    parser.add_argument("--details", action="store_true",
                        help="list every job that failed and show the fake's log")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                        help="show where Python memory grew from job N to the end (slower)")
    parser.add_argument("--samples", type=int, default=4,
                        help="RSS readings split the soak into this many parts")
    parser.add_argument("--fake-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_server:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        anyio.run(serve_fake, args.seed)
        return
    os.environ.setdefault("COMFY_MCP_LOG_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    sys.exit(anyio.run(main_async, args))


if __name__ == "__main__":
    main()
