"""The generation service: everything the MCP tools and the CLI do, with no MCP in it.

``ComfyService.open(settings)`` holds the one HTTP client and the one WebSocket for the
life of the process. ``generate`` fills a template, checks it against the server, queues
it under our own prompt id (after the socket is open, so no event is missed), follows it
to the end, saves the files and builds previews sized for an assistant.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from comfy_mcp import images, outputs
from comfy_mcp.client import ComfyClient, Submitted
from comfy_mcp.config import Settings
from comfy_mcp.convert import is_ui_workflow, ui_to_api
from comfy_mcp.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyTimeout,
    ComfyUnreachable,
    InvalidParameter,
    PromptNotFound,
    WorkflowError,
)
from comfy_mcp.events import EventStream
from comfy_mcp.inference import infer_parameters
from comfy_mcp.jobs import (
    JobFollower,
    JobResult,
    JobWatch,
    OutputFile,
    ProgressCallback,
    entry_finished,
    queue_items,
    result_from_history,
)
from comfy_mcp.validation import check_graph, check_override_inputs, resolve
from comfy_mcp.workflows import Template, TemplateLibrary, check_api_graph

logger = logging.getLogger(__name__)

# Budget for everything we put in one tool result: Claude Desktop refuses results over
# 1 MiB of JSON, and base64 grows bytes by 4/3.
PREVIEW_BYTES = 600_000
PREVIEW_TOKENS = 20_000
_SOCKET_GRACE = 2.0
_WORKFLOW_MAX_BYTES = 10 * 2**20
_PER_CLASS_LIMIT = 24


@dataclass
class SavedFile:
    """An output file as ComfyUI named it and where we saved our copy."""

    output: OutputFile
    path: Path | None
    width: int | None = None
    height: int | None = None
    error: str | None = None


@dataclass
class Generation:
    """Everything one finished job gives back."""

    prompt_id: str
    template: str | None
    values: dict[str, Any]
    files: list[SavedFile]
    previews: list[images.Preview]
    notes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    cached: bool = False
    execution_seconds: float | None = None
    elapsed_seconds: float = 0.0
    graph: dict[str, Any] = field(default_factory=dict)
    generation_id: int | None = None  # the number in the generation history


@dataclass
class Prepared:
    """A checked graph ready to queue, with the values that filled it."""

    template: str | None
    graph: dict[str, Any]
    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Chosen before queueing so that a record can name the job whatever happens.
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class ComfyService:
    """One ComfyUI connection (HTTP + WebSocket) and the operations built on it."""

    def __init__(
        self,
        settings: Settings,
        client: ComfyClient,
        stream: EventStream | None,
        library: TemplateLibrary | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.stream = stream
        self.library = library or TemplateLibrary(settings.user_workflows_dir)
        self._watches: dict[str, JobWatch] = {}  # jobs this process is following
        # Decoding a large output takes hundreds of MB; concurrent jobs take turns.
        self._decoding = anyio.CapacityLimiter(1)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, library: TemplateLibrary | None = None
    ) -> AsyncIterator[ComfyService]:
        """The service with its WebSocket kept open in the background."""
        client = ComfyClient(settings.comfyui_url, timeout=settings.http_timeout,
                             headers=settings.headers)
        stream = EventStream(settings.comfyui_url, headers=settings.headers)
        async with client:
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(stream.run)
                    try:
                        yield cls(settings, client, stream, library)
                    finally:
                        tasks.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # the caller's own error, not a group
                first = _first_error(group)
                if first is None:
                    raise
                raise first from None

    # -- generation ------------------------------------------------------------------------

    async def generate(
        self,
        template_name: str | None,
        params: Mapping[str, Any],
        *,
        workflow: Any = None,
        overrides: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
    ) -> Generation:
        """Fill a template (or a raw workflow), check it, run it, save and preview outputs."""
        job = await self.prepare(template_name, params, workflow=workflow, overrides=overrides)
        return await self.execute(job, on_progress=on_progress, wait_limit=wait_limit)

    async def prepare(
        self,
        template_name: str | None,
        params: Mapping[str, Any],
        *,
        workflow: Any = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Prepared:
        """The checked graph to submit. ``overrides`` set inputs by ``"<node id>.<input>"``."""
        template = await self._template(template_name, workflow)
        info = await self.object_info_for({n["class_type"] for n in template.graph.values()})
        resolved = resolve(template, params, info)
        graph = template.fill(resolved.values)
        apply_overrides(graph, overrides or {})
        check_override_inputs(graph, overrides or {}, info)
        check_graph(graph, info)
        values = {**resolved.values, **(overrides or {})}
        return Prepared(template.name, graph, values, resolved.notes)

    async def execute(
        self,
        job: Prepared,
        *,
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
    ) -> Generation:
        """Run a prepared graph; save and preview what it made."""
        started = time.perf_counter()
        submitted, result = await self.run(job.graph, on_progress=on_progress,
                                           wait_limit=wait_limit, prompt_id=job.prompt_id)
        notes = job.notes + [f"Output dropped by ComfyUI: {p}" for p in submitted.dropped]
        generation = await self.collect(result, job.template, job.values, notes)
        generation.graph = job.graph
        generation.elapsed_seconds = time.perf_counter() - started
        return generation

    async def _template(self, name: str | None, workflow: Any) -> Template:
        if workflow is None:
            return self.library.get(name or "txt2img")
        if name not in (None, "txt2img"):
            raise InvalidParameter("workflow", "give either a template or a workflow, not both")
        data = self._read_workflow(workflow)
        if is_ui_workflow(data):
            classes = {str(n.get("type")) for n in data["nodes"] if isinstance(n, dict)}
            data = ui_to_api(data, await self.object_info_for(classes))
        check_api_graph(data)
        return Template("workflow", "a workflow given with the request", data,
                        infer_parameters(data))

    def _read_workflow(self, workflow: Any) -> Any:
        """A workflow given as a graph, as JSON text, or as the path of a .json file."""
        if isinstance(workflow, dict):
            return workflow
        text = str(workflow).strip()
        if not text.startswith("{"):
            roots = self.settings.upload_roots()
            if self.settings.user_workflows_dir is not None:
                roots.append(self.settings.user_workflows_dir)
            path = outputs.check_readable_file(text, roots, max_bytes=_WORKFLOW_MAX_BYTES)
            text = path.read_text(encoding="utf-8", errors="replace")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise WorkflowError(f"the workflow is not valid JSON: {exc}") from None
        except RecursionError:
            raise WorkflowError("the workflow JSON is nested too deeply to be a workflow") \
                from None

    async def object_info_for(self, class_types: set[str]) -> dict[str, Any]:
        """Node definitions of just these classes (missing ones are left out)."""
        info: dict[str, Any] = {}

        async def fetch(class_type: str) -> None:
            data = await self.client.object_info(class_type)
            if isinstance(data, dict) and isinstance(data.get(class_type), dict):
                info[class_type] = data[class_type]

        if len(class_types) > _PER_CLASS_LIMIT:  # one big answer beats hundreds of small ones
            everything = await self.client.object_info()
            return {c: everything[c] for c in class_types if isinstance(everything.get(c), dict)}
        await concurrently(fetch(class_type) for class_type in class_types)
        return info

    async def run(
        self,
        graph: dict[str, Any],
        *,
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
        prompt_id: str | None = None,
    ) -> tuple[Submitted, JobResult]:
        """Queue a checked graph and follow it to its end.

        If the caller is cancelled at any point, even while POST /prompt is in flight, the
        ComfyUI job is cancelled too: the prompt id is ours, so we can name it either way.
        """
        prompt_id = prompt_id or str(uuid.uuid4())
        watch = JobWatch(prompt_id, graph)
        self._watches[prompt_id] = watch
        if self.stream is not None:
            await self.stream.wait_first_attempt(_SOCKET_GRACE)
            self.stream.subscribe(prompt_id, watch)
        try:
            submitted = await self._submit(graph, prompt_id)
            follower = JobFollower(self.client, self.stream, watch,
                                   poll_interval=self.settings.poll_interval,
                                   on_progress=on_progress)
            return submitted, await follower.wait(wait_limit or self.settings.wait_limit)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._cancel_quietly(prompt_id)
            raise
        finally:
            self._watches.pop(prompt_id, None)
            if self.stream is not None:
                self.stream.unsubscribe(prompt_id, watch)

    async def _submit(self, graph: dict[str, Any], prompt_id: str) -> Submitted:
        """POST /prompt; if the answer is lost, ask whether the job got queued anyway."""
        client_id = self.stream.client_id if self.stream else uuid.uuid4().hex
        try:
            submitted = await self.client.submit(graph, prompt_id=prompt_id, client_id=client_id)
        except (ComfyTimeout, ComfyUnreachable) as exc:
            if isinstance(exc, ComfyUnreachable) and "refused" in exc.reason:
                raise  # nothing listens: it cannot have been queued
            if not await self._known(prompt_id):
                raise
            logger.warning("POST /prompt for %s failed (%s) but the job is queued", prompt_id, exc)
            submitted = Submitted(prompt_id, 0)
        logger.info("queued prompt %s", prompt_id)
        return submitted

    async def _known(self, prompt_id: str) -> bool:
        try:
            queue = await self.client.queue()
            in_queue = any(item[1] == prompt_id
                           for key in ("queue_running", "queue_pending")
                           for item in queue_items(queue, key))
            return in_queue or await self.client.history(prompt_id) is not None
        except ComfyError:
            return False

    async def _cancel_quietly(self, prompt_id: str) -> None:
        try:
            outcome = await self.cancel(prompt_id)
            logger.info("caller cancelled; ComfyUI job %s %s", prompt_id, outcome)
        except ComfyError as exc:
            logger.info("caller cancelled; could not cancel ComfyUI job %s: %s", prompt_id, exc)

    async def result(self, prompt_id: str, *, wait_limit: float = 0.0) -> Generation:
        """The outputs of an earlier job, waiting up to ``wait_limit`` if it still runs."""
        queue = await self.client.queue()  # queue before history: see comfy_mcp.jobs
        entry = await self.client.history(prompt_id)
        watch = JobWatch(prompt_id, _graph_from(entry, queue, prompt_id))
        if entry is None and not watch.graph:
            raise PromptNotFound(prompt_id)
        if entry is not None and entry_finished(entry):
            result = result_from_history(watch, entry)
            return await self.collect(result, None, {}, [])
        if self.stream is not None:
            self.stream.subscribe(prompt_id, watch)
        try:
            follower = JobFollower(self.client, self.stream, watch,
                                   poll_interval=self.settings.poll_interval)
            result = await follower.wait(max(wait_limit, 0.01))
        finally:
            if self.stream is not None:
                self.stream.unsubscribe(prompt_id, watch)
        return await self.collect(result, None, {}, [])

    async def cancel(self, prompt_id: str) -> str:
        """Remove a pending job or interrupt a running one; says which happened."""
        queue = await self.client.queue()
        running = [i[1] for i in queue_items(queue, "queue_running")]
        pending = [i[1] for i in queue_items(queue, "queue_pending")]
        watch = self._watches.get(prompt_id)
        if watch is not None and (prompt_id in pending or prompt_id in running):
            watch.cancelled = True
            watch.changed.set()
        if prompt_id in pending:
            await self.client.delete_pending([prompt_id])
            return "removed from the queue"
        if prompt_id in running:
            await self.client.interrupt(prompt_id)
            return "interrupted"
        if await self.client.history(prompt_id) is not None:
            return "already finished"
        raise PromptNotFound(prompt_id)

    # -- outputs -----------------------------------------------------------------------------

    async def collect(
        self, result: JobResult, template: str | None, values: dict[str, Any], notes: list[str]
    ) -> Generation:
        """Download every output, then save the files and build previews at the same time."""
        saved: list[SavedFile] = [SavedFile(f, None) for f in result.files]
        blobs: dict[int, bytes] = {}

        async def fetch(index: int) -> None:
            blobs[index] = await self._download(saved[index], result.prompt_id)

        await concurrently(fetch(index) for index in range(len(saved)))
        stills = [blobs[i] for i, s in enumerate(saved)
                  if s.output.media in ("image", "animation") and blobs[i]]
        previews: list[images.Preview] = []

        async def preview() -> None:
            made = await anyio.to_thread.run_sync(_previews, stills, limiter=self._decoding)
            previews.extend(made)

        async def store(index: int) -> None:
            await self._store(saved[index], blobs[index], result.prompt_id)

        # Writing a file (with its fsync) and decoding an image both leave the GIL.
        work = [store(index) for index in range(len(saved)) if blobs[index]]
        await concurrently(work + ([preview()] if stills else []))
        if previews and len(stills) > 1 and len(previews) - 1 < len(stills):
            notes.append(f"{len(stills) - len(previews) + 1} of {len(stills)} images have no "
                         "single preview (over the result size budget); all are saved")
        return Generation(
            result.prompt_id, template, values, saved, previews, notes, result.texts,
            result.cached, result.execution_seconds,
        )

    async def _download(self, item: SavedFile, prompt_id: str) -> bytes:
        out = item.output
        try:
            return await self.client.view(out.filename, out.subfolder, out.type)
        except ComfyError as exc:
            item.error = _file_error(exc, out)
            logger.warning("could not fetch %s of %s: %s", out.filename, prompt_id, exc)
            return b""

    async def _store(self, item: SavedFile, data: bytes, prompt_id: str) -> None:
        out = item.output
        try:
            item.path = await anyio.to_thread.run_sync(
                outputs.save_output, self.settings.output_dir, out.subfolder, out.filename, data
            )
        except (ValueError, OSError) as exc:
            item.error = _file_error(exc, out)
            logger.warning("could not save %s of %s: %s", out.filename, prompt_id, exc)
            return
        if out.media == "image":
            try:
                _, item.width, item.height = images.probe(data)
            except ValueError:
                pass

    async def upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Send image bytes to ComfyUI's input folder (the bytes must decode as an image)."""
        images.probe(data)
        return await self.client.upload_image(data, filename)



async def concurrently(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Await coroutines at once; a failure is re-raised as itself, not as a group."""
    async def run(coroutine: Coroutine[Any, Any, None]) -> None:
        await coroutine

    try:
        async with anyio.create_task_group() as tasks:
            for coroutine in coroutines:
                tasks.start_soon(run, coroutine)
    except BaseExceptionGroup as group:
        first = _first_error(group)
        if first is None:
            raise
        raise first from group


def _first_error(group: BaseExceptionGroup) -> Exception | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_error(exc)
            if found is not None:
                return found
        elif isinstance(exc, Exception):
            return exc
    return None


def apply_overrides(graph: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set node inputs named ``"<node id>.<input>"``; an unknown node is an error."""
    for key, value in overrides.items():
        node_id, sep, input_name = str(key).partition(".")
        if not sep or node_id not in graph or not input_name:
            nodes = ", ".join(f"{nid} ({n['class_type']})" for nid, n in graph.items())
            raise InvalidParameter(key, "overrides are written '<node id>.<input>' for a node "
                                   f"of the workflow; its nodes are: {nodes}")
        graph[node_id]["inputs"][input_name] = value


def _previews(stills: list[bytes]) -> list[images.Preview]:
    """Previews within the result budget; a broken image is left out, not fatal."""
    try:
        return images.fit_result(stills, total_bytes=PREVIEW_BYTES, max_tokens=PREVIEW_TOKENS)
    except images.ImageError as exc:  # one output is not a readable image: find which
        logger.warning("previews: %s", exc)
    usable = [data for data in stills if _decodes(data)]
    if not usable or len(usable) == len(stills):
        return []
    return images.fit_result(usable, total_bytes=PREVIEW_BYTES, max_tokens=PREVIEW_TOKENS)


def _decodes(data: bytes) -> bool:
    try:
        images.make_preview(data, max_edge=32)
    except images.ImageError:
        return False
    return True


def _file_error(exc: Exception, out: OutputFile) -> str:
    if isinstance(exc, ComfyHTTPError) and exc.status == 404 and out.temporary:
        return "the temporary preview no longer exists (ComfyUI deletes temp files on restart)"
    return str(exc)


def _graph_from(
    entry: Mapping[str, Any] | None, queue: Mapping[str, Any], prompt_id: str
) -> dict[str, Any]:
    """The submitted graph, from a history entry or a queue item (both keep it at [2])."""
    items: list[Any] = []
    if entry is not None:
        items.append(entry.get("prompt"))
    for key in ("queue_running", "queue_pending"):
        items += [i for i in queue_items(queue, key) if i[1] == prompt_id]
    for item in items:
        if isinstance(item, list) and len(item) > 2 and isinstance(item[2], dict):
            return item[2]
    return {}
