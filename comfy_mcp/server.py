"""The MCP server: tools over ``ComfyService``, one shared service per process.

Tools are thin: they translate arguments, call the service, and render text and images.
Every ``ComfyError`` becomes a ``ToolError`` so the assistant reads the message.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.types import ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import Field

from comfy_mcp import __version__, formatting, uploads
from comfy_mcp.config import Settings
from comfy_mcp.errors import ComfyError, JobStillRunning
from comfy_mcp.resources import guess_mime, output_uri, register_resources
from comfy_mcp.service import ComfyService, Generation
from comfy_mcp.studio import Studio, record_line
from comfy_mcp.workflows import TemplateLibrary

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Make images with the user's ComfyUI. generate_art renders from a text prompt and returns
previews plus the saved file paths; look at the previews before answering. If a job
outlives the wait, call get_result with its prompt_id. Errors say what to change."""

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                        open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                         open_world_hint=False)

Content = list[TextContent | ImageContent | ResourceLink]
_MAX_ID = 2**62  # generation ids are SQLite integers


@dataclass
class AppState:
    studio: Studio


def _studio(ctx: Context) -> Studio:
    return ctx.request_context.lifespan_context.studio


def _service(ctx: Context) -> ComfyService:
    return _studio(ctx).service


@asynccontextmanager
async def _errors_as_tool_errors() -> AsyncIterator[None]:
    """Every failure as text the assistant can act on; never the SDK's bare
    "Error executing tool", which tells it nothing."""
    try:
        yield
    except ComfyError as exc:
        raise ToolError(_clip(str(exc))) from exc
    except ValueError as exc:  # unsafe paths, undecodable images: messages say what to do
        raise ToolError(_clip(str(exc))) from exc
    except (ToolError, MCPError):
        raise
    except Exception as exc:
        logger.exception("unexpected error in a tool")
        raise ToolError(
            f"Unexpected error ({_clip(f'{type(exc).__name__}: {exc}', 300)}). ComfyUI gave "
            "an answer comfy-mcp did not expect, or this is a bug; the server log has the "
            "details. Retrying once is reasonable."
        ) from exc


def _clip(text: str, limit: int = 4000) -> str:
    """Messages can quote what ComfyUI sent; keep them a readable size."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Progress:
    """Turns job progress into MCP progress notifications that only ever increase."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.value = 0.0

    async def __call__(self, fraction: float, message: str) -> None:
        self.value = max(self.value, round(fraction * 100, 1))
        await self.ctx.report_progress(self.value, 100, message)


def generation_content(gen: Generation, output_dir: Path) -> Content:
    """Text first, then the previews, then a link to each full-resolution file."""
    content: Content = [TextContent(type="text", text=formatting.generation_text(gen))]
    for preview in gen.previews:
        data = base64.b64encode(preview.data).decode("ascii")
        content.append(ImageContent(type="image", data=data, mime_type=preview.mime_type))
    for item in gen.files:
        uri = output_uri(output_dir, item.path) if item.path else None
        if uri is not None:
            content.append(ResourceLink(type="resource_link", uri=uri, name=item.path.name,
                                        mime_type=guess_mime(item.path)))
    return content


# -- tools ------------------------------------------------------------------------------------


async def generate_art(
    ctx: Context,
    prompt: Annotated[str | None, Field(description="What to draw.")] = None,
    negative_prompt: Annotated[str | None, Field(description="What to avoid.")] = None,
    width: Annotated[int | None, Field(description="Pixels, multiple of 8 (default 512).")]
    = None,
    height: Annotated[int | None, Field(description="Pixels (default 512).")] = None,
    steps: Annotated[int | None, Field(description="Default 20; more is slower.")] = None,
    cfg: Annotated[float | None, Field(description="Prompt adherence, default 7.")] = None,
    seed: Annotated[int | None, Field(description="-1: random. Omitted: random (a "
                                      "workflow keeps its own).")] = None,
    sampler: str | None = None,
    scheduler: str | None = None,
    checkpoint: Annotated[str | None, Field(description="Default: first listed.")] = None,
    batch_size: Annotated[int | None, Field(description="Images at once (default 1).")]
    = None,
    image: Annotated[str | None, Field(description="Input image name from upload_image.")]
    = None,
    denoise: Annotated[float | None, Field(description="img2img: 0 keep .. 1 replace.")]
    = None,
    template: Annotated[str, Field(description="See list_templates.")] = "txt2img",
    workflow: Annotated[dict[str, Any] | str | None, Field(
        description="Instead of a template: an API or UI workflow (JSON), or a .json path.")]
    = None,
    params: Annotated[dict[str, Any] | None, Field(description="Other template parameters; "
                                                   "'<node id>.<input>' sets any input.")]
    = None,
    wait_seconds: Annotated[float | None, Field(description="Max wait; then get_result.",
                                                gt=0)] = None,
) -> Content:
    """Render images in ComfyUI; returns previews, seed, prompt_id and saved paths."""
    named = {
        "prompt": prompt, "negative_prompt": negative_prompt, "width": width,
        "height": height, "steps": steps, "cfg": cfg, "seed": seed, "sampler": sampler,
        "scheduler": scheduler, "checkpoint": checkpoint, "batch_size": batch_size,
        "image": image, "denoise": denoise,
    }
    given = {k: v for k, v in named.items() if v is not None}
    overrides = {}
    for key, value in (params or {}).items():
        (overrides if "." in key else given)[key] = value
    async with _errors_as_tool_errors():
        try:
            gen = await _studio(ctx).generate(
                template, given, workflow=workflow, overrides=overrides,
                on_progress=_Progress(ctx), wait_limit=wait_seconds,
            )
        except JobStillRunning as exc:  # not a failure: the job goes on
            return [TextContent(type="text", text=_still_running(exc))]
    return generation_content(gen, _service(ctx).settings.output_dir)


async def get_result(
    ctx: Context,
    prompt_id: str,
    wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 0,
) -> Content:
    """Fetch an earlier job's images by prompt_id, waiting up to wait_seconds."""
    async with _errors_as_tool_errors():
        try:
            gen = await _studio(ctx).result(prompt_id, wait_limit=wait_seconds)
        except JobStillRunning as exc:
            return [TextContent(type="text", text=_still_running(exc))]
    return generation_content(gen, _service(ctx).settings.output_dir)


async def cancel(ctx: Context, prompt_id: str) -> str:
    """Cancel a job: remove it from the queue, or interrupt it if running."""
    async with _errors_as_tool_errors():
        outcome = await _studio(ctx).cancel(prompt_id)
    return f"{prompt_id}: {outcome}"


async def queue_status(ctx: Context) -> str:
    """ComfyUI's running and waiting jobs."""
    async with _errors_as_tool_errors():
        queue = await _service(ctx).client.queue()
    return formatting.queue_text(queue)


async def gpu_stats(ctx: Context) -> str:
    """ComfyUI's devices, free VRAM and RAM, and versions."""
    async with _errors_as_tool_errors():
        stats = await _service(ctx).client.system_stats()
    return formatting.system_text(stats)


async def list_nodes(
    ctx: Context,
    search: Annotated[str, Field(description="Match name/category/description.")] = "",
    category: Annotated[str, Field(description="Category prefix, e.g. 'image'.")] = "",
    node: Annotated[str, Field(description="One class: show its inputs.")] = "",
    limit: Annotated[int, Field(ge=1, le=500)] = 100,
) -> str:
    """List ComfyUI node classes, or one class's inputs, types and ranges."""
    service = _service(ctx)
    async with _errors_as_tool_errors():
        if node:
            info = await service.client.object_info(node)
            if node not in info:
                raise ToolError(f"ComfyUI has no node class {node!r}; use search to find one")
            return formatting.node_detail_text(node, info[node])
        info = await service.client.object_info()
    return formatting.node_list_text(info, search, category, limit)


async def list_models(
    ctx: Context,
    folder: Annotated[str, Field(description="checkpoints, loras, vae, upscale_models…")]
    = "checkpoints",
    limit: Annotated[int, Field(ge=1, le=2000)] = 200,
) -> str:
    """List model files in one ComfyUI model folder."""
    client = _service(ctx).client
    async with _errors_as_tool_errors():
        folders = await client.model_folders()
        if folder not in folders:
            raise ToolError(f"no model folder {folder!r}; folders: {', '.join(folders)}")
        names = await client.models(folder)
    if not names:
        return f"No files in {folder}."
    shown = [str(n) for n in names[:limit]]
    more = f"\n... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} in {folder}:\n" + "\n".join(shown) + more


async def list_templates(ctx: Context) -> str:
    """Workflow templates for generate_art, with their parameters."""
    library = _service(ctx).library
    async with _errors_as_tool_errors():
        lines = [formatting.template_text(tpl) for tpl in library.all()]
    return "\n".join(lines) or "No templates."


async def upload_image(
    ctx: Context,
    path: Annotated[str | None, Field(
        description="Local image file, in the working or output folder (or "
        "COMFY_MCP_UPLOAD_DIRS).")] = None,
    data: Annotated[str | None, Field(
        description="Instead of path: the image bytes, base64.")] = None,
    filename: Annotated[str | None, Field(
        description="Name to upload under; default: the file's own name.")] = None,
) -> str:
    """Upload an image (local path or base64 data) to ComfyUI's inputs; returns its name."""
    service = _service(ctx)
    settings = service.settings
    prepare = partial(uploads.prepare, path, data, filename, roots=settings.upload_roots(),
                      max_bytes=settings.upload_max_bytes)
    async with _errors_as_tool_errors():
        blob, name = await anyio.to_thread.run_sync(prepare)
        value = uploads.reply_name(await service.upload(blob, name))
    return f"Uploaded as {value!r}; use this name as a LoadImage 'image' input."


def _still_running(exc: JobStillRunning) -> str:
    text = str(exc)
    if exc.generation_id is not None:
        text += f" It is recorded as generation #{exc.generation_id}."
    return text


async def refine(
    ctx: Context,
    generation: Annotated[int, Field(description="Generation id (#N) to start from.",
                                     ge=1, le=_MAX_ID)],
    mode: Annotated[Literal["refine", "vary", "img2img", "rerun"], Field(
        description="refine: keep seed, apply changes; vary: new seed; img2img: start "
                    "from the picked image; rerun: exact repeat.")] = "refine",
    pick: Annotated[int | None, Field(description="Which image of it (1-based).", ge=1,
                                      le=4096)] = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    denoise: float | None = None,
    params: Annotated[dict[str, Any] | None, Field(description="Any other changes.")] = None,
    wait_seconds: Annotated[float | None, Field(gt=0)] = None,
) -> Content:
    """Make a new generation from an earlier one, changing only what you give."""
    named = {"prompt": prompt, "negative_prompt": negative_prompt, "steps": steps,
             "cfg": cfg, "seed": seed, "denoise": denoise}
    changes = {k: v for k, v in named.items() if v is not None} | dict(params or {})
    async with _errors_as_tool_errors():
        try:
            gen = await _studio(ctx).refine(generation, mode=mode, pick=pick, changes=changes,
                                            on_progress=_Progress(ctx),
                                            wait_limit=wait_seconds)
        except JobStillRunning as exc:
            return [TextContent(type="text", text=_still_running(exc))]
    return generation_content(gen, _service(ctx).settings.output_dir)


async def history(
    ctx: Context,
    generation: Annotated[int | None, Field(description="Show this one's lineage.", ge=1,
                                            le=_MAX_ID)] = None,
    limit: Annotated[int, Field(ge=1, le=200)] = 10,
) -> str:
    """Recent generations, or one generation's ancestors and children with changes."""
    studio = _studio(ctx)
    async with _errors_as_tool_errors():
        if generation is not None:
            return await studio.lineage_text(generation)
        records = await studio.recent(limit)
    if not records:
        return "No generations recorded yet."
    return "\n".join(record_line(r) for r in records)


async def compare(
    ctx: Context,
    a: Annotated[int, Field(description="First generation id.", ge=1, le=_MAX_ID)],
    b: Annotated[int, Field(description="Second generation id.", ge=1, le=_MAX_ID)],
    pick_a: Annotated[int | None, Field(ge=1, le=4096)] = None,
    pick_b: Annotated[int | None, Field(ge=1, le=4096)] = None,
) -> Content:
    """Two generations side by side in one image, with their parameter differences."""
    async with _errors_as_tool_errors():
        sheet, text = await _studio(ctx).compare(a, b, pick_a, pick_b)
    data = base64.b64encode(sheet.data).decode("ascii")
    return [TextContent(type="text", text=text),
            ImageContent(type="image", data=data, mime_type=sheet.mime_type)]


async def note(
    ctx: Context,
    generation: Annotated[int, Field(ge=1, le=_MAX_ID)],
    text: Annotated[str, Field(description="Your critique; empty clears it.")],
) -> str:
    """Attach a note (e.g. your critique) to a generation."""
    async with _errors_as_tool_errors():
        record = await _studio(ctx).note(generation, text)
    return f"Noted on {record.label}."


TOOLS: list[tuple[Any, ToolAnnotations]] = [
    (generate_art, _WRITE), (get_result, _READ), (cancel, _WRITE), (queue_status, _READ),
    (gpu_stats, _READ), (list_nodes, _READ), (list_models, _READ), (list_templates, _READ),
    (upload_image, _WRITE), (refine, _WRITE), (history, _READ), (compare, _READ),
    (note, _WRITE),
]


def build_server(settings: Settings | None = None) -> MCPServer:
    """The MCP server, with one ComfyService opened for the server's lifetime."""
    settings = settings or Settings.from_env()
    library = TemplateLibrary(settings.user_workflows_dir)
    running: list[Studio] = []

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[AppState]:
        async with Studio.open(settings, library) as studio:
            running.append(studio)
            try:
                yield AppState(studio)
            finally:
                running.remove(studio)

    def current() -> ComfyService:
        if not running:
            raise ResourceError("comfy-mcp is still starting; try again")
        return running[-1].service

    server = MCPServer("comfy-mcp", instructions=INSTRUCTIONS, version=__version__,
                       lifespan=lifespan)
    for fn, hints in TOOLS:
        server.add_tool(fn, annotations=hints, structured_output=False)
    register_resources(server, library, current)
    server.add_prompt(Prompt.from_function(
        art, name="art", description="Make an image, look at it, refine it in rounds"))
    return server


def art(request: Annotated[str, Field(description="What to draw.")]) -> str:
    """The /art loop as an MCP prompt, for clients without Claude Code commands."""
    return prompt_text("art.md").replace("$ARGUMENTS", request)


def prompt_text(name: str) -> str:
    """A file of prompts/ without its frontmatter (the part Claude Code reads)."""
    checkout = Path(__file__).resolve().parent.parent / "prompts" / name
    if checkout.is_file():
        text = checkout.read_text(encoding="utf-8")
    else:
        text = (resources.files("comfy_mcp.prompts") / name).read_text(encoding="utf-8")
    if text.startswith("---"):
        text = text.split("\n---", 1)[1].lstrip("-").lstrip("\n")
    return text
