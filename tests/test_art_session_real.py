"""An /art-style session through a real MCP client on the real ComfyUI, with the
generation history surviving a restart of comfy-mcp (and ComfyUI forgetting its cache)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

from comfy_mcp.server import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.comfyui]

CHECKPOINT = "tiny-sd15-random.safetensors"


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(client: Client, tool: str, **args: object) -> CallToolResult:
    result = await client.call_tool(tool, args)
    assert not result.is_error, text_of(result)
    return result


def generation_id(result: CallToolResult) -> int:
    return int(re.search(r"^generation: #(\d+)$", text_of(result), re.M).group(1))


def saved(result: CallToolResult) -> list[Path]:
    return [Path(p) for p in re.findall(r"^\s+\d+\. (/\S+)", text_of(result), re.M)]


def max_difference(a: Path, b: Path) -> int:
    return max(abs(x - y) for x, y in zip(pixels(a), pixels(b), strict=True))


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


async def test_art_session_survives_restart(real_settings, comfyui) -> None:
    async with Client(build_server(real_settings)) as client:
        first = await call(client, "generate_art", prompt="a lighthouse", width=64, height=64,
                           steps=1, batch_size=3, seed=21, checkpoint=CHECKPOINT)
        gen1 = generation_id(first)
        assert len(saved(first)) == 3
        await call(client, "note", generation=gen1, text="2 is closest; sky too flat")

        alone = await call(client, "refine", generation=gen1, pick=2)
        assert len(saved(alone)) == 1 and "pick" in text_of(await call(
            client, "history", generation=generation_id(alone)))
        # Candidate 2 again: the same noise, so the same picture up to float rounding
        # (a batch of 1 and a batch of 3 round differently); candidate 1 is far off.
        assert max_difference(saved(alone)[0], saved(first)[1]) <= 3
        assert max_difference(saved(alone)[0], saved(first)[0]) > 30

        second = await call(client, "refine", generation=gen1, cfg=9.0, steps=2)
        gen2 = generation_id(second)
        assert "seed: 21" in text_of(second) and "cfg=9.0" in text_of(second)

        third = await call(client, "refine", generation=gen2, mode="img2img", pick=2,
                           denoise=0.4)
        gen3 = generation_id(third)
        assert "template=img2img" in text_of(third) and "denoise=0.4" in text_of(third)

        side = await call(client, "compare", a=gen1, b=gen2, pick_a=2, pick_b=2)
        assert "cfg: 7.0 -> 9.0" in text_of(side)
        assert [c for c in side.content if isinstance(c, ImageContent)]

    async with httpx.AsyncClient() as http:  # ComfyUI forgets its cache: a real re-render
        assert (await http.post(comfyui.url + "/free", json={"free_memory": True})).is_success

    async with Client(build_server(real_settings)) as client:  # comfy-mcp restarted
        lineage = text_of(await call(client, "history", generation=gen2))
        assert f"#{gen1}" in lineage and f"#{gen3}" in lineage
        assert "note: 2 is closest; sky too flat" in lineage
        assert "refine: steps: 1 -> 2; cfg: 7.0 -> 9.0" in lineage
        recent = text_of(await call(client, "history"))
        assert recent.index(f"#{gen3}") < recent.index(f"#{gen1}")

        again = await call(client, "refine", generation=gen1, mode="rerun")
        assert generation_id(again) > gen3
        before, after = saved(first), saved(again)
        assert before[0] != after[0]  # really rendered again, not ComfyUI's cached files
        assert [pixels(p) for p in before] == [pixels(p) for p in after]
        assert all(p.exists() for p in saved(first))


async def test_history_errors_are_clear(real_client) -> None:
    missing = await real_client.call_tool("history", {"generation": 999})
    assert missing.is_error and "no generation #999" in text_of(missing)
    rerun = await real_client.call_tool("refine", {"generation": 999, "mode": "rerun"})
    assert rerun.is_error and "no generation #999" in text_of(rerun)
