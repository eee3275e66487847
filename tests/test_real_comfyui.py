"""The main job end to end: MCP client -> comfy-mcp -> a real ComfyUI 0.3.75 on the CPU.

The checkpoint has random weights, so images are noise; what is checked is real: the
pixels ComfyUI rendered, their size and mode, and that seeds behave.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

CHECKPOINT = "tiny-sd15-random.safetensors"

pytestmark = [pytest.mark.anyio, pytest.mark.comfyui]

TINY = {"width": 64, "height": 64, "steps": 1, "checkpoint": CHECKPOINT}


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def images_of(result: CallToolResult) -> list[Image.Image]:
    blocks = [c for c in result.content if isinstance(c, ImageContent)]
    return [Image.open(io.BytesIO(base64.b64decode(b.data))) for b in blocks]


def rgb(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def saved_paths(result: CallToolResult) -> list[Path]:
    return [Path(p) for p in re.findall(r"^\s+\d+\. (/\S+\.png)", text_of(result), re.M)]


async def generate(client: Any, **params: Any) -> CallToolResult:
    result = await client.call_tool("generate_art", {"prompt": "a red fox", **TINY, **params})
    assert not result.is_error, text_of(result)
    return result


async def free_cache(url: str) -> None:
    """Make ComfyUI forget cached node outputs so the next run really renders."""
    async with httpx.AsyncClient() as http:
        response = await http.post(url + "/free", json={"free_memory": True})
        assert response.status_code == 200


async def test_generate_art_returns_real_pixels(real_client, real_settings) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    result = await real_client.call_tool(
        "generate_art", {"prompt": "a red fox in the snow", **TINY, "seed": 7},
        progress_callback=on_progress,
    )
    assert not result.is_error, text_of(result)
    text = text_of(result)
    assert "seed: 7" in text and re.search(r"prompt_id: [0-9a-f-]{36}", text)
    [path] = saved_paths(result)
    assert path.is_relative_to(real_settings.output_dir)
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == (64, 64) and saved.mode == "RGB"
        raw = saved.tobytes()
        colours = {raw[i:i + 3] for i in range(0, len(raw), 3)}
        assert len(colours) > 100  # rendered noise, not a flat fill
    [preview] = images_of(result)
    assert preview.size == (64, 64)
    assert progress and any("KSampler" in (m or "") for _, m in progress)
    values = [v for v, _ in progress]
    assert values == sorted(values)


async def test_same_seed_same_pixels_other_seed_differs(real_client, comfyui) -> None:
    first = saved_paths(await generate(real_client, seed=1234))[0]
    await free_cache(comfyui.url)
    again = saved_paths(await generate(real_client, seed=1234))[0]
    other = saved_paths(await generate(real_client, seed=4321))[0]
    assert first != again  # a real second render, not the cached file
    pixels = [rgb(p) for p in (first, again, other)]
    assert pixels[0] == pixels[1]
    assert pixels[0] != pixels[2]


async def test_random_seed_is_reported_and_batch_saved(real_client) -> None:
    result = await generate(real_client, batch_size=3)
    seed = int(re.search(r"^seed: (\d+)$", text_of(result), re.M).group(1))
    assert 0 <= seed < 2**53
    paths = saved_paths(result)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    sheet, *singles = images_of(result)
    assert sheet.width > 64 and len(singles) == 3


async def test_unknown_checkpoint_refused_with_names(real_client, comfyui) -> None:
    result = await real_client.call_tool("generate_art",
                                         {"prompt": "x", "checkpoint": "sdxl.safetensors"})
    assert result.is_error
    assert "Parameter 'checkpoint': 'sdxl.safetensors' is not available." in text_of(result)
    assert CHECKPOINT in text_of(result)


async def test_cached_rerun_still_returns_images(real_client) -> None:
    first = await generate(real_client, seed=99)
    second = await generate(real_client, seed=99)
    assert "cache" in text_of(second)
    assert saved_paths(second) and images_of(second)
    assert saved_paths(first)[0].read_bytes() == saved_paths(second)[0].read_bytes()


async def test_queue_and_gpu_stats(real_client) -> None:
    queue = text_of(await real_client.call_tool("queue_status", {}))
    assert queue.startswith("ComfyUI's queue is empty") or "running" in queue
    stats = text_of(await real_client.call_tool("gpu_stats", {}))
    assert "device cpu (cpu)" in stats and "versions: ComfyUI 0.3.75" in stats


async def test_list_nodes_search_and_detail(real_client) -> None:
    found = text_of(await real_client.call_tool("list_nodes", {"search": "ksampler"}))
    assert "KSampler — KSampler [sampling]" in found
    detail = text_of(await real_client.call_tool("list_nodes", {"node": "EmptyLatentImage"}))
    assert "width (required): INT (default 512, min 16, max 16384, step 8)" in detail
    missing = await real_client.call_tool("list_nodes", {"node": "NoSuchNode"})
    assert missing.is_error and "no node class 'NoSuchNode'" in text_of(missing)


async def test_list_models_and_templates(real_client) -> None:
    models = text_of(await real_client.call_tool("list_models", {}))
    assert CHECKPOINT in models
    templates = text_of(await real_client.call_tool("list_templates", {}))
    assert "\ntxt2img: Text to image" in templates
    assert "prompt (string, required)" in templates and "checkpoint (model)" in templates
    for name in ("img2img", "inpaint", "upscale", "upscale_model", "txt2img_sdxl"):
        assert f"\n{name}: " in "\n" + templates


async def test_upload_image_then_refuse_non_image(
    real_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 24), "purple").save(tmp_path / "ref.png")
    result = await real_client.call_tool("upload_image", {"path": "ref.png"})
    assert not result.is_error, text_of(result)
    assert "Uploaded as 'ref" in text_of(result)
    (tmp_path / "notes.png").write_text("not an image")
    refused = await real_client.call_tool("upload_image", {"path": "notes.png"})
    assert refused.is_error and "image" in text_of(refused).lower()


async def test_prompt_not_found(real_client) -> None:
    result = await real_client.call_tool(
        "get_result", {"prompt_id": "00000000-0000-4000-8000-000000000000"})
    assert result.is_error
    assert "has no job with prompt id 00000000-0000-4000-8000-000000000000" in text_of(result)


async def test_missing_custom_node_named(comfyui, tmp_path: Path) -> None:
    from mcp import Client

    from comfy_mcp.config import Settings
    from comfy_mcp.server import build_server

    workflows = tmp_path / "workflows"
    workflows.mkdir()
    graph = {"1": {"class_type": "VHS_LoadVideo", "inputs": {}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    doc = {"graph": graph, "parameters": {"prompt": {"bind": ["2.filename_prefix"]}}}
    (workflows / "video.json").write_text(json.dumps(doc))
    settings = Settings(comfyui_url=comfyui.url, output_dir=tmp_path / "out",
                        user_workflows_dir=workflows)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_art", {"prompt": "x", "template": "video"})
    assert result.is_error
    assert "This ComfyUI has no node class VHS_LoadVideo" in text_of(result)
    assert "custom node packs" in text_of(result)


async def test_comfyui_not_running(tmp_path: Path) -> None:
    import comfyui_cpu
    from mcp import Client

    from comfy_mcp.config import Settings
    from comfy_mcp.server import build_server

    url = f"http://127.0.0.1:{comfyui_cpu.free_port()}"
    settings = Settings(comfyui_url=url, output_dir=tmp_path)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate_art", {"prompt": "x"})
    assert result.is_error
    assert f"ComfyUI is not reachable at {url} (connection refused)" in text_of(result)
    assert "COMFYUI_URL" in text_of(result)


async def test_tools_over_real_stdio(comfyui, tmp_path: Path) -> None:
    """comfy-mcp as a subprocess speaking MCP on stdio, as Claude Code starts it."""
    import os
    import sys

    from mcp import Client, StdioServerParameters

    Image.new("RGB", (16, 16), "teal").save(tmp_path / "in.png")
    env = dict(os.environ, COMFYUI_URL=comfyui.url, COMFY_MCP_OUTPUT_DIR=str(tmp_path / "out"))
    params = StdioServerParameters(command=sys.executable, args=["-m", "comfy_mcp"], env=env,
                                   cwd=str(tmp_path))
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"generate_art", "queue_status", "gpu_stats", "list_nodes",
                "upload_image"} <= names
        result = await client.call_tool("generate_art", {"prompt": "stdio", **TINY})
        assert not result.is_error, text_of(result)
        [path] = saved_paths(result)
        assert size_of(path) == (64, 64) and len(images_of(result)) == 1
        for tool, args in [("queue_status", {}), ("gpu_stats", {}),
                           ("list_nodes", {"node": "SaveImage"}),
                           ("upload_image", {"path": "in.png"})]:
            answer = await client.call_tool(tool, args)
            assert not answer.is_error, (tool, text_of(answer))


async def test_cli_generate_prints_saved_path(comfyui, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, COMFYUI_URL=comfyui.url, COMFY_MCP_OUTPUT_DIR=str(tmp_path))
    args = [sys.executable, "-m", "comfy_mcp", "generate", "a red fox", "--width", "64",
            "--height", "64", "--steps", "1", "--seed", "5", "--checkpoint", CHECKPOINT]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert Path(line).is_relative_to(tmp_path) and size_of(Path(line)) == (64, 64)
    assert "seed: 5" in done.stderr


async def test_cli_generate_unreachable_exits_nonzero(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import comfyui_cpu

    url = f"http://127.0.0.1:{comfyui_cpu.free_port()}"
    env = dict(os.environ, COMFYUI_URL=url, COMFY_MCP_OUTPUT_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "comfy_mcp", "generate", "x"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert f"ComfyUI is not reachable at {url}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_cli_img2img_with_param_then_result(comfyui, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    Image.new("RGB", (64, 48), "navy").save(tmp_path / "start.png")
    env = dict(os.environ, COMFYUI_URL=comfyui.url, COMFY_MCP_OUTPUT_DIR=str(tmp_path / "out"),
               COMFY_MCP_DB=str(tmp_path / "h.sqlite3"))
    base = [sys.executable, "-m", "comfy_mcp"]
    done = subprocess.run(
        [*base, "generate", "a boat", "--template", "img2img", "--image", "start.png",
         "--param", "denoise=0.3", "--param", "3.steps=1", "--checkpoint", CHECKPOINT],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert size_of(Path(done.stdout.strip())) == (64, 48)
    prompt_id = re.search(r"prompt_id: (\S+)", done.stderr).group(1)
    again = subprocess.run([*base, "result", prompt_id], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() and "denoise=0.3" in again.stderr
