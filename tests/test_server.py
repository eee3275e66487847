"""The MCP surface itself: tool list size and shape (no ComfyUI needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from comfy_mcp.config import Settings
from comfy_mcp.server import build_server

pytestmark = pytest.mark.anyio

EXPECTED = {"generate_art", "get_result", "cancel", "queue_status", "gpu_stats", "list_nodes",
            "list_models", "list_templates", "upload_image"}


async def test_tools_list_is_small_and_complete(tmp_path: Path) -> None:
    settings = Settings(comfyui_url="http://127.0.0.1:9", output_dir=tmp_path)
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    names = {tool.name for tool in tools}
    assert EXPECTED <= names
    size = len(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True)
                           for t in tools]))
    assert size < 12_000, f"tools/list is {size} bytes"
    for tool in tools:
        assert tool.description and len(tool.description) < 200
