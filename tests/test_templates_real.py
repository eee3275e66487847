"""Every built-in template, raw and UI-format workflows, and an assistant-style session,
on the real CPU ComfyUI (model-free graphs end to end, checkpoint graphs on the tiny
generated checkpoint)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

pytestmark = [pytest.mark.anyio, pytest.mark.comfyui]

CHECKPOINT = "tiny-sd15-random.safetensors"
TINY = {"steps": 1, "checkpoint": CHECKPOINT}
DATA = Path(__file__).parent / "data"


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def saved(result: CallToolResult) -> list[Path]:
    return [Path(p) for p in re.findall(r"^\s+\d+\. (/\S+)", text_of(result), re.M)]


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def previews(result: CallToolResult) -> list[tuple[int, int]]:
    blocks = [c for c in result.content if isinstance(c, ImageContent)]
    return [Image.open(io.BytesIO(base64.b64decode(b.data))).size for b in blocks]


async def call(client: Any, tool: str, **args: Any) -> CallToolResult:
    result = await client.call_tool(tool, args)
    assert not result.is_error, text_of(result)
    return result


async def upload(client: Any, folder: Path, name: str, image: Image.Image) -> str:
    image.save(folder / name)
    result = await call(client, "upload_image", path=str(folder / name))
    return re.search(r"Uploaded as '([^']+)'", text_of(result)).group(1)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), bytes(range(256)) * (width * height * 3 // 256
                                                                         + 1))


async def test_img2img(real_client, workdir: Path) -> None:
    name = await upload(real_client, workdir, "photo.png", noise(64, 48))
    result = await call(real_client, "generate_art", template="img2img", prompt="a fox",
                        image=name, denoise=0.5, seed=3, **TINY)
    [path] = saved(result)
    assert size_of(path) == (64, 48)
    assert "template=img2img" in text_of(result) and "denoise=0.5" in text_of(result)


async def test_inpaint(real_client, workdir: Path) -> None:
    image = await upload(real_client, workdir, "scene.png", noise(64, 64))
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (16, 16, 48, 48))
    mask_name = await upload(real_client, workdir, "mask.png", mask)
    result = await call(real_client, "generate_art", template="inpaint", prompt="a window",
                        image=image, params={"mask": mask_name}, **TINY)
    assert size_of(saved(result)[0]) == (64, 64)


async def test_upscale_without_model(real_client, workdir: Path) -> None:
    name = await upload(real_client, workdir, "small.png", Image.new("RGB", (32, 24), "orange"))
    result = await call(real_client, "generate_art", template="upscale", image=name,
                        params={"scale_by": 2.0, "method": "nearest-exact"})
    [path] = saved(result)
    assert size_of(path) == (64, 48)
    with Image.open(path) as big:
        assert big.convert("RGB").getpixel((10, 10)) == (255, 165, 0)


async def test_upscale_with_model(real_client, workdir: Path) -> None:
    """A random-weight 2x RealESRGAN-Compact network made by scripts/comfyui_cpu.py."""
    name = await upload(real_client, workdir, "small.png", noise(32, 24))
    result = await call(real_client, "generate_art", template="upscale_model", image=name)
    assert size_of(saved(result)[0]) == (64, 48)
    assert "upscale_model=tiny-compact-x2.safetensors" in text_of(result)
    wrong = await real_client.call_tool("generate_art", {
        "template": "upscale_model", "image": name,
        "params": {"upscale_model": "tiny-compact-x4.safetensors"}})
    assert wrong.is_error
    assert ("Parameter 'upscale_model': 'tiny-compact-x4.safetensors' is not available. Did "
            "you mean 'tiny-compact-x2.safetensors'?") in text_of(wrong)


async def test_sdxl_variant_runs(real_client) -> None:
    result = await call(real_client, "generate_art", template="txt2img_sdxl", prompt="x",
                        width=64, height=64, **TINY)
    assert size_of(saved(result)[0]) == (64, 64)
    assert "sampler=dpmpp_2m, scheduler=karras" in text_of(result)


async def test_image_name_that_climbs_out_is_refused(real_client) -> None:
    result = await real_client.call_tool("generate_art", {
        "template": "upscale", "image": "../output/secret.png"})
    assert result.is_error
    assert "'../output/secret.png' is not a file name in ComfyUI's input folder" in \
        text_of(result)


async def test_raw_api_workflow_with_inferred_size(real_client) -> None:
    graph = {"1": {"class_type": "EmptyImage",
                   "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x2040FF}},
             "2": {"class_type": "SaveImage",
                   "inputs": {"images": ["1", 0], "filename_prefix": "raw/api"}}}
    result = await call(real_client, "generate_art", workflow=json.dumps(graph), width=40,
                        height=24, params={"1.color": 0xFF0000})
    [path] = saved(result)
    assert size_of(path) == (40, 24)
    with Image.open(path) as image:
        assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


async def test_ui_workflow_converted_and_prompt_found_by_links(real_client, workdir) -> None:
    (workdir / "ui.json").write_text((DATA / "ui_txt2img.json").read_text())
    result = await call(real_client, "generate_art", workflow="ui.json", prompt="a tower",
                        seed=11)
    [path] = saved(result)
    assert size_of(path) == (64, 48) and "seed: 11" in text_of(result)
    assert path.parent.name == "ui"


async def test_ui_workflow_with_unknown_node_refused(real_client, workdir) -> None:
    ui = json.loads((DATA / "ui_txt2img.json").read_text())
    ui["nodes"].append({"id": 30, "type": "IPAdapterAdvanced", "mode": 0, "inputs": [],
                        "outputs": [], "widgets_values": []})
    result = await real_client.call_tool("generate_art", {"workflow": json.dumps(ui)})
    assert result.is_error
    assert "This ComfyUI has no node class IPAdapterAdvanced" in text_of(result)


async def test_workflow_path_outside_allowed_folders_refused(real_client, workdir) -> None:
    result = await real_client.call_tool("generate_art", {"workflow": "/etc/passwd"})
    assert result.is_error and "outside" in text_of(result).lower()


async def test_workflow_without_output_node_refused(real_client) -> None:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8,
                                                          "batch_size": 1, "color": 0}}}
    result = await real_client.call_tool("generate_art", {"workflow": json.dumps(graph)})
    assert result.is_error and "no output node" in text_of(result)


async def test_assistant_session(real_client, comfyui, workdir: Path) -> None:
    """Upload, img2img, a wait limit that expires then get_result, and a cancel."""
    name = await upload(real_client, workdir, "start.png", noise(64, 64))
    first = await call(real_client, "generate_art", template="img2img", prompt="a boat",
                       image=name, denoise=0.7, **TINY)
    assert saved(first)

    slow = {"prompt": "a slow harbour", "width": 256, "height": 256, "steps": 6,
            "checkpoint": CHECKPOINT}
    pending = await call(real_client, "generate_art", wait_seconds=0.5, **slow)
    text = text_of(pending)
    assert "is still" in text and "get_result" in text
    prompt_id = re.search(r"prompt_id='([0-9a-f-]{36})'", text).group(1)
    fetched = await call(real_client, "get_result", prompt_id=prompt_id, wait_seconds=120)
    assert size_of(saved(fetched)[0]) == (256, 256) and previews(fetched) == [(256, 256)]

    outcome: dict[str, CallToolResult] = {}

    async def run_long() -> None:
        outcome["result"] = await real_client.call_tool(
            "generate_art", {**slow, "steps": 30, "seed": 5})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_long)
        running = await wait_for_running(comfyui.url)
        answer = await call(real_client, "cancel", prompt_id=running)
        assert text_of(answer) == f"{running}: interrupted"
    assert outcome["result"].is_error
    assert "The job was interrupted" in text_of(outcome["result"])


async def test_cancelled_call_cancels_comfyui_job(real_client, comfyui) -> None:
    slow = {"prompt": "cancel me", "width": 256, "height": 256, "steps": 30, "seed": 8,
            "checkpoint": CHECKPOINT}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(real_client.call_tool, "generate_art", slow)
        running = await wait_for_running(comfyui.url)
        tasks.cancel_scope.cancel()
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            entry = (await http.get(f"{comfyui.url}/history/{running}")).json()
            if entry:
                break
            await anyio.sleep(0.1)
    messages = [m[0] for m in entry[running]["status"]["messages"]]
    assert "execution_interrupted" in messages


async def wait_for_running(url: str) -> str:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            queue = (await http.get(url + "/queue")).json()
            if queue["queue_running"]:
                return queue["queue_running"][0][1]
            await anyio.sleep(0.05)
    raise AssertionError("no job started")


async def test_resources_templates_models_and_outputs(real_client) -> None:
    from mcp.types import ResourceLink

    listed = {str(r.uri) for r in (await real_client.list_resources()).resources}
    assert "comfy://templates" in listed
    templates = json.loads((await real_client.read_resource("comfy://templates")).contents[0]
                           .text)
    assert {"txt2img", "img2img", "inpaint", "upscale"} <= {t["name"] for t in templates}
    one = json.loads((await real_client.read_resource("comfy://templates/txt2img")).contents[0]
                     .text)
    assert one["parameters"]["prompt"]["bind"] == ["6.text"] and "3" in one["graph"]
    models = json.loads((await real_client.read_resource("comfy://models/checkpoints"))
                        .contents[0].text)
    assert CHECKPOINT in models

    result = await call(real_client, "generate_art", prompt="linked", width=64, height=64,
                        **TINY)
    [link] = [c for c in result.content if isinstance(c, ResourceLink)]
    assert link.uri.startswith("comfy://outputs/") and link.mime_type == "image/png"
    blob = (await real_client.read_resource(link.uri)).contents[0].blob
    assert base64.b64decode(blob) == saved(result)[0].read_bytes()
