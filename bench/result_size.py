"""Result size: an 8-image batch of 2048x2048 noise PNGs through ``generate_art``.

The fake ComfyUI of tests/fakecomfy.py (in this process, 127.0.0.1) is made to serve 8
distinct 2048x2048 RGB noise PNGs (about 12.6 MB each, the worst case for every codec) for a
txt2img job with batch_size 8. ``python -m comfy_mcp`` runs over stdio. Reports the bytes of
the JSON-RPC response line (Claude Desktop refuses over 1 MiB), a token estimate, what the
previews are (a numbered contact sheet plus as many singles as fit), and the times.

    .venv/bin/python bench/result_size.py [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as c
import anyio
from fakecomfy import FakeComfy, Script
from PIL import Image

LIMIT = 2**20
EDGE = 2048
BATCH = 8


def noise_png(seed: int, edge: int = EDGE) -> bytes:
    pixels = random.Random(seed).randbytes(edge * edge * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (edge, edge), pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class NoiseComfy(FakeComfy):
    """The fake, serving noise PNGs for every image a SaveImage node writes."""

    noise: list[bytes] = []

    def _save(self, kind: str, picture: Any, prefix: str) -> list[dict[str, str]]:
        items = super()._save(kind, picture, prefix)
        for index, item in enumerate(items):
            key = (item["type"], item["subfolder"], item["filename"])
            self.files[key] = self.noise[index % len(self.noise)]
        return items


@dataclass
class Run:
    seconds: float
    size: int
    text: str
    previews: list[tuple[int, int, int]]  # width, height, bytes

    @property
    def tokens(self) -> int:
        from comfy_mcp.images import image_tokens

        return len(self.text) // 4 + sum(image_tokens(w, h) for w, h, _ in self.previews)


@dataclass
class Findings:
    runs: list[Run] = field(default_factory=list)
    previews_alone: float = 0.0  # seconds to make the previews in-process from the 8 PNGs
    png_bytes: int = 0


def describe(result: Any, seconds: float, size: int) -> Run:
    if result.is_error:
        raise RuntimeError(c.result_text(result)[:500])
    shapes = []
    for data in c.result_images(result):
        with Image.open(io.BytesIO(data)) as image:
            shapes.append((image.width, image.height, len(data)))
    return Run(seconds, size, c.result_text(result), shapes)


async def measure(runs: int, scratch: Path) -> Findings:
    findings = Findings()
    c.say(f"making {BATCH} noise PNGs of {EDGE}x{EDGE} ...")
    NoiseComfy.noise = [noise_png(seed) for seed in range(BATCH)]
    findings.png_bytes = sum(len(data) for data in NoiseComfy.noise)
    async with NoiseComfy.serve(Script(duration=0.0)) as fake:
        env = c.comfy_mcp_env(fake.url, scratch / "out")
        with open(scratch / "comfy-mcp.log", "w") as log:
            async with c.stdio_client(c.comfy_mcp_command(), env, log) as client:
                for number in range(runs):
                    started = time.perf_counter()
                    result = await client.call_tool("generate_art", {
                        "prompt": "noise", "width": EDGE, "height": EDGE, "steps": 1,
                        "batch_size": BATCH, "seed": 1000 + number})
                    seconds = time.perf_counter() - started
                    findings.runs.append(describe(result, seconds, c.Wire.last.size))
    findings.previews_alone = time_previews(NoiseComfy.noise)
    return findings


def time_previews(pngs: list[bytes]) -> float:
    from comfy_mcp import service

    started = time.perf_counter()
    service._previews(pngs)
    return time.perf_counter() - started


def report(findings: Findings) -> str:
    run = findings.runs[-1]
    sizes = [r.size for r in findings.runs]
    sheet, singles = run.previews[0], run.previews[1:]
    visible = re.search(r"contact sheet of (\d+) images", run.text)
    all_visible = visible is not None and int(visible.group(1)) == BATCH
    rows = [
        ["JSON-RPC response line", f"{max(sizes):,} bytes ({max(sizes) / LIMIT:.0%} of 1 MiB)"],
        ["images in the result", f"{len(run.previews)}: contact sheet {sheet[0]}x{sheet[1]} "
                                 f"({sheet[2] / 1000:.0f} KB) + {len(singles)} singles"],
        ["singles", ", ".join(f"{w}x{h} ({n / 1000:.0f} KB)" for w, h, n in singles) or "none"],
        ["all 8 visible (numbered contact sheet of 8)", "yes" if all_visible else "NO"],
        ["token estimate (images: 28x28 px blocks; text: chars/4)", f"{run.tokens:,}"],
        ["PNG bytes ComfyUI served", f"{findings.png_bytes / 1e6:.1f} MB"],
        ["tool call time, median", f"{c.median([r.seconds for r in findings.runs]):.2f} s"],
        ["of which making the previews (same 8 PNGs, in-process)",
         f"{findings.previews_alone:.2f} s"],
    ]
    ok = max(sizes) < LIMIT and all_visible
    lines = [
        "## 5. Result size (`bench/result_size.py`)", "", f"Run {c.stamp()}.", "",
        f"{BATCH} distinct {EDGE}x{EDGE} RGB noise PNGs from the fake ComfyUI (job time 0), "
        f"one `generate_art` call with batch_size {BATCH} over stdio; {len(findings.runs)} "
        "calls.", "",
        c.table(["measure", "value"], rows), "",
        f"Target: under 1 MiB with all {BATCH} visible: {c.verdict(ok)}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    c.add_common_arguments(parser)
    args = parser.parse_args()
    c.apply_common_arguments(args)
    with tempfile.TemporaryDirectory(prefix="comfy-mcp-bench-") as tmp:
        findings = anyio.run(measure, args.runs, Path(tmp))
    body = report(findings)
    print(body)
    c.update_results("result_size", body)


if __name__ == "__main__":
    sys.exit(main())
