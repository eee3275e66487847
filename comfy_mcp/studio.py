"""Generation with a memory: every job is recorded, and any record can be refined,
varied, re-run, compared or annotated later, across restarts of comfy-mcp and ComfyUI.

``Studio`` wraps ``ComfyService`` (the ComfyUI side) and ``GenerationStore`` (the SQLite
history). If the history file cannot be opened, generation still works and the history
tools say why the history is off.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

from comfy_mcp import compare, images
from comfy_mcp.config import Settings
from comfy_mcp.errors import (
    ComfyError,
    FollowFailed,
    InvalidParameter,
    JobError,
    JobInterrupted,
    JobStillRunning,
    PromptNotFound,
)
from comfy_mcp.jobs import ProgressCallback
from comfy_mcp.memory import (
    GenerationRecord,
    GenerationStore,
    HistoryError,
    StoredFile,
    describe_changes,
    param_diff,
)
from comfy_mcp.service import ComfyService, Generation, Prepared
from comfy_mcp.workflows import TemplateLibrary

logger = logging.getLogger(__name__)

Mode = Literal["refine", "vary", "img2img", "rerun"]
T = TypeVar("T")
_IMG2IMG_KEEP = ("negative_prompt", "steps", "cfg", "sampler", "scheduler", "checkpoint")


class HistoryOff(HistoryError):
    """Raised by history tools when the history database could not be opened."""


class Studio:
    """The generation service plus its history."""

    def __init__(
        self, service: ComfyService, store: GenerationStore | None, store_error: str = ""
    ) -> None:
        self.service = service
        self.store = store
        self.store_error = store_error

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, library: TemplateLibrary | None = None
    ) -> AsyncIterator[Studio]:
        store, error = await _open_store(settings.db_path)
        try:
            async with ComfyService.open(settings, library) as service:
                yield cls(service, store, error)
        finally:
            if store is not None:
                store.close()

    # -- generating ----------------------------------------------------------------------

    async def generate(
        self,
        template: str | None,
        params: Mapping[str, Any],
        *,
        workflow: Any = None,
        overrides: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
    ) -> Generation:
        job = await self.service.prepare(template, params, workflow=workflow,
                                         overrides=overrides)
        return await self.run(job, on_progress=on_progress, wait_limit=wait_limit)

    async def run(
        self,
        job: Prepared,
        *,
        parent: int | None = None,
        kind: str = "new",
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
    ) -> Generation:
        """Execute a prepared job and record it, whatever the outcome."""
        record = partial(self._record, job, parent, kind)
        try:
            gen = await self.service.execute(job, on_progress=on_progress,
                                             wait_limit=wait_limit)
        except JobStillRunning as exc:
            exc.generation_id = await record("still_running", None, None)
            raise
        except JobInterrupted as exc:
            await record("cancelled", None, str(exc))
            raise
        except JobError as exc:
            await record("failed", None, str(exc))
            raise
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await record("cancelled", None, "the request was cancelled")
            raise
        except (ComfyError, OSError):
            raise  # nothing was queued, or ComfyUI could not be reached: nothing to record
        except Exception as exc:  # an answer we did not expect: keep the job findable
            logger.exception("lost track of job %s", job.prompt_id)
            await record("failed", None, f"{type(exc).__name__}: {exc}")
            raise FollowFailed(job.prompt_id, exc) from exc
        gen.generation_id = await record("success", gen, None)
        return gen

    async def _record(
        self, job: Prepared, parent: int | None, kind: str, status: str,
        gen: Generation | None, error: str | None,
    ) -> int | None:
        """Add the job to the history; a failing history never fails the generation."""
        if self.store is None:
            return None
        add = partial(
            self.store.add, graph=job.graph, params=job.values, template=job.template,
            parent_id=parent, kind=kind, prompt_id=job.prompt_id,
            backend_url=self.service.settings.comfyui_url, status=status, error=error,
            files=[StoredFile.from_saved(f) for f in gen.files] if gen else (),
            elapsed_seconds=gen.elapsed_seconds if gen else None,
            execution_seconds=gen.execution_seconds if gen else None,
        )
        try:
            return (await self._call(add)).id
        except HistoryError as exc:
            logger.warning("generation %s not recorded: %s", job.prompt_id, exc)
            if gen is not None:
                gen.notes.append(f"not recorded in the generation history: {exc}")
            return None

    async def result(self, prompt_id: str, *, wait_limit: float = 0.0) -> Generation:
        """An earlier job's outputs; its history record is brought up to date."""
        found = await self._by_prompt_id(prompt_id)
        try:
            gen = await self.service.result(prompt_id, wait_limit=wait_limit)
        except PromptNotFound:
            if found is not None and found.status != "still_running":
                raise PromptNotFound(prompt_id, recorded=f"{found.label} ({found.status})") \
                    from None
            raise
        except JobInterrupted as exc:
            await self._update(found, status="cancelled", error=str(exc))
            raise
        except JobError as exc:
            await self._update(found, status="failed", error=str(exc))
            raise
        if found is not None:
            await self._update(found, status="success",
                               files=[StoredFile.from_saved(f) for f in gen.files],
                               execution_seconds=gen.execution_seconds)
            gen.generation_id, gen.template, gen.values = found.id, found.template, found.params
        return gen

    async def cancel(self, prompt_id: str) -> str:
        """Cancel a ComfyUI job and mark its history record cancelled."""
        outcome = await self.service.cancel(prompt_id)
        if outcome != "already finished":
            await self._update(await self._by_prompt_id(prompt_id), status="cancelled",
                               error=f"cancelled ({outcome})")
        return outcome

    async def _by_prompt_id(self, prompt_id: str) -> GenerationRecord | None:
        if self.store is None:
            return None
        try:
            return await self._call(partial(self.store.by_prompt_id, prompt_id))
        except HistoryError as exc:
            logger.warning("history lookup failed: %s", exc)
            return None

    async def _update(self, record: GenerationRecord | None, **changes: Any) -> None:
        if self.store is None or record is None:
            return
        try:
            await self._call(partial(self.store.update_result, record.id, **changes))
        except HistoryError as exc:
            logger.warning("history of %s not updated: %s", record.label, exc)

    async def refine(
        self,
        generation_id: int,
        *,
        mode: Mode = "refine",
        pick: int | None = None,
        changes: Mapping[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        wait_limit: float | None = None,
    ) -> Generation:
        """A new generation from a recorded one, changing only what is given."""
        base = await self.get(generation_id)
        changes = dict(changes or {})
        if mode == "rerun":
            if changes:
                raise InvalidParameter("mode", "rerun repeats a generation exactly; give no "
                                       "changes, or use mode 'refine'")
            job = Prepared(base.template, copy.deepcopy(base.graph), dict(base.params))
        elif mode == "img2img":
            job = await self._img2img_job(base, pick, changes)
        else:
            job = await self._refine_job(base, mode, changes)
            if pick is None and isinstance(base.params.get("pick"), int):
                pick = base.params["pick"]  # refining a picked candidate stays on it
            if pick is not None:
                await self._pick_from_batch(job, base, pick)
        return await self.run(job, parent=base.id, kind=mode, on_progress=on_progress,
                              wait_limit=wait_limit)

    async def _pick_from_batch(self, job: Prepared, base: GenerationRecord, pick: int) -> None:
        """Render only candidate ``pick`` of a batch, exactly as it was in the batch.

        ComfyUI draws each batch member's noise by its batch index, so taking index
        ``pick - 1`` out of the same batch (LatentFromBatch) reproduces that candidate
        alone; the refinement then changes only what was asked.
        """
        sources = _batched_latents(job.graph)
        if not sources:
            raise InvalidParameter("pick", f"{base.label} is not a batch of latents to pick "
                                   "from; leave pick out, or use mode 'img2img'")
        size = max(batch for _, _, batch in sources)
        if not 1 <= pick <= min(size, 64):
            raise InvalidParameter("pick", f"{base.label} made {size} images; pick 1 to "
                                   f"{min(size, 64)}")
        info = await self.service.object_info_for({"LatentFromBatch"})
        if not info:
            raise InvalidParameter("pick", "this ComfyUI has no LatentFromBatch node")
        for number, (sampler, link, _) in enumerate(sources):
            node_id = f"pick{number}"
            job.graph[node_id] = {"class_type": "LatentFromBatch", "inputs": {
                "samples": link, "batch_index": pick - 1, "length": 1}}
            job.graph[sampler]["inputs"]["latent_image"] = [node_id, 0]
        job.values["pick"] = pick

    async def _refine_job(self, base: GenerationRecord, mode: Mode,
                          changes: dict[str, Any]) -> Prepared:
        values = {k: v for k, v in base.params.items() if k != "pick"} | changes
        if mode == "vary" and "seed" not in changes:
            values["seed"] = -1  # random, also where a workflow's own seed is the default
        params = {k: v for k, v in values.items() if "." not in k}
        overrides = {k: v for k, v in values.items() if "." in k}
        if base.template in (None, "workflow"):
            return await self.service.prepare(None, params, workflow=base.graph,
                                              overrides=overrides)
        return await self.service.prepare(base.template, params, overrides=overrides)

    async def _img2img_job(self, base: GenerationRecord, pick: int | None,
                           changes: dict[str, Any]) -> Prepared:
        source = _picked(base, pick, self.service.settings.output_dir)
        data = await anyio.Path(str(source.path)).read_bytes()
        upload = await self.service.upload(data, f"gen{base.id}_{source.path.name}")
        name = upload.get("name", source.path.name)
        if upload.get("subfolder"):
            name = f"{upload['subfolder']}/{name}"
        params = {k: base.params[k] for k in ("prompt", *_IMG2IMG_KEEP) if k in base.params}
        params.update({"image": name, "denoise": 0.5, "seed": base.seed})
        params.update(changes)
        return await self.service.prepare("img2img", params)

    # -- looking back --------------------------------------------------------------------

    async def get(self, generation_id: int) -> GenerationRecord:
        store = self._store()
        return await self._call(partial(store.get, generation_id))

    async def recent(self, limit: int) -> list[GenerationRecord]:
        return await self._call(partial(self._store().recent, limit))

    async def lineage_text(self, generation_id: int) -> str:
        lineage = await self._call(partial(self._store().lineage, generation_id))
        lines = []
        for entry in lineage.entries:
            marker = "→ " if entry.record.id == generation_id else "  "
            indent = "  " * entry.depth
            lines.append(f"{marker}{indent}{record_line(entry.record, with_note=False)}")
            lines.append(f"  {indent}    {entry.record.kind}: {entry.summary}")
            if entry.record.note:
                lines.append(f"  {indent}    note: {entry.record.note}")
        if lineage.truncated:
            lines.append("(more generations left out)")
        return "\n".join(lines)

    async def note(self, generation_id: int, text: str) -> GenerationRecord:
        return await self._call(partial(self._store().set_note, generation_id, text))

    async def compare(
        self, a: int, b: int, pick_a: int | None = None, pick_b: int | None = None
    ) -> tuple[images.Preview, str]:
        first, second = await self.get(a), await self.get(b)
        out = self.service.settings.output_dir
        file_a, file_b = _picked(first, pick_a, out), _picked(second, pick_b, out)
        blobs = [await anyio.Path(str(f.path)).read_bytes() for f in (file_a, file_b)]
        labels = (f"#{a}" + (f".{pick_a}" if pick_a else ""),
                  f"#{b}" + (f".{pick_b}" if pick_b else ""))
        sheet = await anyio.to_thread.run_sync(
            partial(compare.side_by_side, *blobs, labels=labels))
        changes = param_diff(first.params, second.params)
        text = (f"left {labels[0]}: {file_a.path}\nright {labels[1]}: {file_b.path}\n"
                f"changes from {labels[0]} to {labels[1]}: "
                f"{describe_changes(changes) if changes else 'same parameters'}")
        return sheet, text

    def _store(self) -> GenerationStore:
        if self.store is None:
            raise HistoryOff(f"The generation history is off: {self.store_error}")
        return self.store

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except HistoryError:
            raise
        except (OSError, ValueError) as exc:
            raise HistoryOff(f"The generation history failed: {exc}") from exc


def record_line(record: GenerationRecord, *, with_note: bool = True) -> str:
    """One generation in a line: id, when, template, seed, prompt, files, status, note."""
    prompt = str(record.params.get("prompt") or "")
    prompt = (prompt[:50] + "…") if len(prompt) > 50 else prompt
    parts = [record.label, record.created_at.strftime("%Y-%m-%d %H:%M"),
             record.template or "workflow"]
    if record.seed is not None:
        parts.append(f"seed {record.seed}")
    if prompt:
        parts.append(f'"{prompt}"')
    images_saved = sum(1 for f in record.files if f.path is not None)
    parts.append(f"{images_saved} file{'s' if images_saved != 1 else ''}")
    if record.status != "success":
        parts.append(f"[{record.status}]")
    if record.missing_files:
        parts.append(f"[{len(record.missing_files)} missing on disk]")
    line = "  ".join(parts)
    return line + (f"\n      note: {record.note}" if record.note and with_note else "")


def _batched_latents(graph: Mapping[str, Any]) -> list[tuple[str, list[Any], int]]:
    """(sampler id, its latent link, batch size) for samplers fed an empty latent batch."""
    found = []
    for node_id, node in graph.items():
        link = node["inputs"].get("latent_image")
        if not (isinstance(link, list) and len(link) == 2 and link[0] in graph):
            continue
        batch = graph[link[0]]["inputs"].get("batch_size")
        if isinstance(batch, int) and batch > 1:
            found.append((node_id, link, batch))
    return found


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def _picked(record: GenerationRecord, pick: int | None, output_dir: Path) -> StoredFile:
    """The pick-th still image of a generation (1-based), which must still be on disk."""
    stills = [f for f in record.files if f.media in ("image", "animation")]
    if not stills:
        raise InvalidParameter("generation", f"{record.label} has no saved image")
    index = pick or 1
    if not 1 <= index <= len(stills):
        raise InvalidParameter("pick", f"{record.label} has images 1 to {len(stills)}")
    chosen = stills[index - 1]
    if chosen.path is not None and not _inside(chosen.path, output_dir):
        # The history file is only as trustworthy as its folder: read nothing outside ours.
        raise InvalidParameter("pick", f"image {index} of {record.label} is recorded outside "
                               f"the output folder {output_dir}; it is not read")
    if chosen.path is None or not chosen.exists:
        raise InvalidParameter("pick", f"image {index} of {record.label} is no longer on disk "
                               f"({chosen.path}); pick another or re-run it")
    return chosen


async def _open_store(path: Path | None) -> tuple[GenerationStore | None, str]:
    if path is None:
        return None, "no history database is configured (set COMFY_MCP_DB)"
    try:
        return await anyio.to_thread.run_sync(GenerationStore.open, path), ""
    except (HistoryError, OSError) as exc:
        logger.warning("generation history off: %s", exc)
        return None, str(exc)
