"""One generation through comfy-mcp's MCP server, as an assistant would make it.

    python scripts/demo.py ["a prompt"]

Uses the ComfyUI at COMFYUI_URL (default http://127.0.0.1:8188). When nothing answers
there, it installs (once, cached in .cache/comfyui) and starts a CPU-only ComfyUI with a
generated random-weight checkpoint, so the picture is noise, but a real one. Then it
starts `comfy-mcp` as a stdio MCP server, calls `generate_art`, and prints the path of
the saved image.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfyui_cpu  # noqa: E402

DEFAULT_URL = "http://127.0.0.1:8188"
TINY = {"width": 128, "height": 128, "steps": 2, "checkpoint": "tiny-sd15-random.safetensors"}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/system_stats", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def comfyui(url: str) -> Iterator[tuple[str, dict]]:
    """The ComfyUI to use, and generation parameters that suit it."""
    if answers(url):
        print(f"using the ComfyUI at {url}", file=sys.stderr)
        yield url, {}
        return
    print(f"no ComfyUI answers at {url}; starting a CPU one (first run installs it, "
          "about 2 minutes)", file=sys.stderr)
    install = comfyui_cpu.ensure_installed()
    with comfyui_cpu.start_server(install) as server:
        yield server.url, TINY


async def generate(url: str, prompt: str, params: dict) -> int:
    env = dict(os.environ, COMFYUI_URL=url)
    env.setdefault("COMFY_MCP_OUTPUT_DIR", str(Path.cwd() / "comfy-output"))
    # The demo's noise pictures stay out of the user's real generation history.
    env.setdefault("COMFY_MCP_DB", str(Path.cwd() / "comfy-output" / "demo-history.sqlite3"))
    server = StdioServerParameters(command=sys.executable, args=["-m", "comfy_mcp"], env=env)
    started = time.perf_counter()
    async with Client(server) as client:
        result = await client.call_tool("generate_art", {"prompt": prompt, **params})
    text = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    print(text, file=sys.stderr)
    if result.is_error:
        return 1
    print(f"generate_art answered in {time.perf_counter() - started:.1f} s "
          "(including starting comfy-mcp)", file=sys.stderr)
    for path in re.findall(r"^\s+\d+\. (/\S+)", text, re.M):
        print(path)
    return 0


def main() -> int:
    prompt = " ".join(sys.argv[1:]) or "a lighthouse on a cliff at dusk, oil painting"
    url = os.environ.get("COMFYUI_URL", DEFAULT_URL).rstrip("/")
    with comfyui(url) as (used_url, params):
        return anyio.run(generate, used_url, prompt, params)


if __name__ == "__main__":
    sys.exit(main())
