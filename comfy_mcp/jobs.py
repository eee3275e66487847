"""Following one queued job to its end, over the WebSocket or by polling, and reading
its result from ``/history``.

Completion rules, as the real server behaves (see shared/comfyui-api.md §4 and §9):

* ``executing`` with ``node: null`` is sent after the history entry is written: the
  fastest safe signal. ``execution_success`` / ``execution_error`` /
  ``execution_interrupted`` come *before* the write, so after them we wait briefly for
  ``executing null`` and read history with a short retry.
* A fully cached run sends almost no events; it still ends with ``executing null``.
* Without a socket (never opened, or dropped) we poll ``/queue`` then ``/history``. A job
  in neither is lost (ComfyUI restarted): ComfyUI writes history before it removes the
  job from the running list, so asking in that order never misses a finished job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from comfy_mcp.client import ComfyClient
from comfy_mcp.errors import (
    ComfyError,
    ComfyHTTPError,
    ComfyTimeout,
    ComfyUnreachable,
    ContactLost,
    JobFailed,
    JobInterrupted,
    JobLost,
    JobStillRunning,
    NoOutputs,
    OutOfMemory,
)
from comfy_mcp.events import EventStream

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], Awaitable[None]]

_HISTORY_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
# Failures a poll survives: ComfyUI restarting, a proxy blip, a slow answer.
_TRANSIENT = (ComfyUnreachable, ComfyTimeout, ComfyHTTPError)
_WS_SAFETY_POLL = 5.0
# How long ComfyUI may stay unreachable while we follow a job: long enough for a restart.
CONTACT_GRACE = 30.0
_VIDEO = (".mp4", ".webm", ".mov", ".mkv", ".avi")
_AUDIO = (".flac", ".mp3", ".wav", ".ogg", ".opus", ".m4a")


@dataclass(frozen=True)
class OutputFile:
    """One file a job produced, named exactly as ComfyUI's history names it."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    media: str  # image, animation, video, audio or file

    @property
    def temporary(self) -> bool:
        return self.type == "temp"


@dataclass
class JobResult:
    """What a finished job produced."""

    prompt_id: str
    files: list[OutputFile]
    texts: list[str] = field(default_factory=list)
    cached: bool = False
    execution_seconds: float | None = None


class JobWatch:
    """Collects one prompt's WebSocket events; the follower reads its state."""

    def __init__(self, prompt_id: str, graph: Mapping[str, Any]) -> None:
        self.prompt_id = prompt_id
        self.graph = graph
        self.changed = anyio.Event()
        self.started = False
        self.done = False  # executing null: history is written
        self.ended: str | None = None  # success, error or interrupted
        self.error: dict[str, Any] | None = None
        self.cached_nodes: set[str] = set()
        self.finished_nodes: set[str] = set()
        self.ws_outputs: dict[str, Any] = {}
        self.node: str | None = None
        self.step: tuple[int, int] | None = None
        self.queue_changed = False
        self.cancelled = False  # set when comfy-mcp itself cancelled the job
        self.resync = False  # the socket dropped or came back: poll at once

    def deliver(self, kind: str, data: Mapping[str, Any]) -> None:
        """Take one event. A malformed one is logged and dropped: events come from the
        server, and one bad field must never stop the socket that serves every job."""
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return
        try:
            handler(data)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            logger.debug("ignoring malformed %s event for %s: %s", kind, self.prompt_id, exc)
            return
        self.changed.set()

    def connection_changed(self, connected: bool) -> None:
        # Events sent while the socket was down are lost for good: look at history now.
        self.resync = True
        self.changed.set()

    def _on_status(self, data: Mapping[str, Any]) -> None:
        self.queue_changed = True

    def _on_execution_start(self, data: Mapping[str, Any]) -> None:
        self.started = True

    def _on_execution_cached(self, data: Mapping[str, Any]) -> None:
        self.started = True
        nodes = data.get("nodes")
        if isinstance(nodes, list):
            self.cached_nodes.update(str(n) for n in nodes)

    def _on_executing(self, data: Mapping[str, Any]) -> None:
        node = data.get("node")
        if node is None:
            self.done = True
            return
        if self.node is not None:
            self.finished_nodes.add(self.node)
        self.started, self.node, self.step = True, str(node), None

    def _on_progress(self, data: Mapping[str, Any]) -> None:
        value, maximum = data.get("value"), data.get("max")
        if isinstance(value, int) and isinstance(maximum, int) and 0 <= value <= maximum < 2**31:
            self.step = (value, maximum)
            if data.get("node") is not None:
                self.node = str(data["node"])

    def _on_executed(self, data: Mapping[str, Any]) -> None:
        if isinstance(data.get("output"), dict):
            self.ws_outputs[str(data.get("node"))] = data["output"]

    def _on_execution_success(self, data: Mapping[str, Any]) -> None:
        self.ended = "success"

    def _on_execution_error(self, data: Mapping[str, Any]) -> None:
        if data.get("exception_type") == "ExecutionBlocked":
            return  # informational: execution goes on (comfyui-api.md §9)
        self.ended, self.error = "error", dict(data)

    def _on_execution_interrupted(self, data: Mapping[str, Any]) -> None:
        self.ended, self.error = "interrupted", dict(data)

    # -- progress text --------------------------------------------------------------------

    def fraction(self) -> float:
        total = max(len(self.graph), 1)
        done = len(self.cached_nodes | self.finished_nodes)
        if self.step:
            done += self.step[0] / self.step[1]
        return min(done / total, 1.0)

    def describe(self) -> str:
        if self.node is None:
            return "started" if self.started else "queued"
        node = self.graph.get(self.node)
        name = self.node
        if isinstance(node, dict):
            name = (node.get("_meta") or {}).get("title") or node.get("class_type") or name
        text = f"running {name} (node {self.node})"
        if self.step:
            text += f", step {self.step[0]}/{self.step[1]}"
        return text


class JobFollower:
    """Waits for one submitted job and returns its result, or raises why there is none.

    Events wake the follower at once; a poll of ``/queue`` + ``/history`` runs on its own
    clock (fast while the socket is down, every few seconds as a safety net while it is
    up), so a stream of other users' events can never starve it. A poll that cannot reach
    ComfyUI is retried: a proxy blip or a restart does not end the wait by itself.
    """

    def __init__(
        self,
        client: ComfyClient,
        stream: EventStream | None,
        watch: JobWatch,
        *,
        poll_interval: float = 1.0,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.watch = watch
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self._last_report: tuple[float, str] | None = None
        self._missing = 0
        self._poll_delay = 0.1
        self._unreachable: ComfyError | None = None
        self._unreachable_since = 0.0

    async def wait(self, wait_limit: float) -> JobResult:
        deadline = anyio.current_time() + wait_limit
        next_poll = anyio.current_time() + self._poll_pause()
        watch = self.watch
        while True:
            if watch.done or watch.ended:
                return await self._finish()
            now = anyio.current_time()
            if now >= deadline:
                raise self._expired(wait_limit)
            if now >= next_poll or watch.resync or watch.queue_changed and not watch.started:
                watch.queue_changed = watch.resync = False
                result = await self._poll()
                if result is not None:
                    return result
                next_poll = anyio.current_time() + self._poll_pause()
                continue
            with anyio.move_on_after(min(next_poll, deadline) - now):
                await watch.changed.wait()
            watch.changed = anyio.Event()
            await self._report(watch.fraction(), watch.describe())

    def _poll_pause(self) -> float:
        if self.stream is not None and self.stream.connected and self._unreachable is None:
            return _WS_SAFETY_POLL
        delay = self._poll_delay
        self._poll_delay = min(self._poll_delay * 2, self.poll_interval)
        return delay

    def _expired(self, wait_limit: float) -> Exception:
        if self._unreachable is not None:
            return ContactLost(self.watch.prompt_id, self._unreachable)
        state = "running" if self.watch.started else "queued"
        return JobStillRunning(self.watch.prompt_id, wait_limit, state)

    async def _report(self, fraction: float, message: str) -> None:
        if self.on_progress is None or (fraction, message) == self._last_report:
            return
        self._last_report = (fraction, message)
        await self.on_progress(fraction, message)

    async def _poll(self) -> JobResult | None:
        """One polling round: queue first, then history (see module docstring)."""
        try:
            queue = await self.client.queue()
            # A job still waiting in the queue has no history yet: skip that request.
            place = _queue_position(queue, self.watch.prompt_id)
            waiting = place is not None and place[0] > 0
            entry = None if waiting else await self.client.history(self.watch.prompt_id)
        except _TRANSIENT as exc:
            now = anyio.current_time()
            if self._unreachable is None:
                logger.warning("lost contact with ComfyUI while following %s: %s",
                               self.watch.prompt_id, exc)
                self._unreachable_since = now
            self._unreachable = exc
            if now - self._unreachable_since > CONTACT_GRACE:  # not a restart: it is gone
                raise ContactLost(self.watch.prompt_id, exc) from exc
            return None
        self._unreachable = None
        if entry is not None and entry_finished(entry):
            return result_from_history(self.watch, entry)
        position = _queue_position(queue, self.watch.prompt_id)
        if position is not None:
            self._missing = 0
            if not self.watch.started and position[0]:
                await self._report(0.0, f"queued, position {position[0]} of {position[1]}")
            return None
        self._missing += 1
        if self._missing >= 2 or self.watch.cancelled:
            raise JobInterrupted(self.watch.prompt_id) if self.watch.cancelled else JobLost(
                self.watch.prompt_id)
        return None

    async def _finish(self) -> JobResult:
        watch = self.watch
        if not watch.done:
            # execution_success & co. come before the history write; executing null after.
            with anyio.move_on_after(1.0):
                while not watch.done:
                    await watch.changed.wait()
                    watch.changed = anyio.Event()
        entry = await self._history_retrying()
        if entry is None:
            logger.warning("no history for %s after completion; using WS data", watch.prompt_id)
            entry = _entry_from_events(watch)
        return result_from_history(watch, entry)

    async def _history_retrying(self) -> dict[str, Any] | None:
        """History right after a completion signal: briefly empty (race) or unreachable."""
        entry = None
        for delay in (0.0, *_HISTORY_RETRIES):
            await anyio.sleep(delay)
            try:
                entry = await self.client.history(self.watch.prompt_id)
            except _TRANSIENT as exc:
                logger.info("history of %s not readable yet: %s", self.watch.prompt_id, exc)
                continue
            if entry is not None and entry_finished(entry):
                return entry
        return entry


def queue_items(queue: Any, key: str) -> list[list[Any]]:
    """The well-formed items of ``queue_running`` or ``queue_pending``, in execution order.

    ComfyUI keeps pending items in heap order; sorting by number, then id, gives the order
    they will run in.
    """
    items = queue.get(key) if isinstance(queue, dict) else None
    if not isinstance(items, list):
        return []
    good = [item for item in items if _is_item(item)]
    return sorted(good, key=lambda item: (_number(item[0]), str(item[1])))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else float("inf")


def _queue_position(queue: Any, prompt_id: str) -> tuple[int, int] | None:
    """(position, jobs ahead + ours) with 0 meaning running; None when not queued."""
    running = queue_items(queue, "queue_running")
    if any(item[1] == prompt_id for item in running):
        return 0, len(running)
    pending = queue_items(queue, "queue_pending")
    for index, item in enumerate(pending):
        if item[1] == prompt_id:
            return index + 1 + len(running), len(pending) + len(running)
    return None


def _is_item(item: Any) -> bool:
    return isinstance(item, list) and len(item) >= 2


def entry_finished(entry: Mapping[str, Any]) -> bool:
    status = entry.get("status")
    if not isinstance(status, dict):
        return "outputs" in entry  # very old servers wrote no status
    return bool(status.get("completed")) or status.get("status_str") in ("success", "error")


def _entry_from_events(watch: JobWatch) -> dict[str, Any]:
    messages: list[list[Any]] = []
    if watch.ended == "error":
        messages.append(["execution_error", watch.error or {}])
    elif watch.ended == "interrupted":
        messages.append(["execution_interrupted", watch.error or {}])
    status = "error" if watch.ended in ("error", "interrupted") else "success"
    return {"outputs": watch.ws_outputs, "status": {"status_str": status, "messages": messages}}


def result_from_history(watch: JobWatch, entry: Mapping[str, Any]) -> JobResult:
    """Turn a history entry into a JobResult, or raise the reason it has none."""
    prompt_id = watch.prompt_id
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    raw = status.get("messages")
    messages = [(m[0], m[1]) for m in raw if _is_item(m)] if isinstance(raw, list) else []
    for name, data in messages:
        if name == "execution_error" and isinstance(data, dict):
            raise job_failed(prompt_id, data)
        if name == "execution_interrupted":
            node = data.get("node_id") if isinstance(data, dict) else None
            raise JobInterrupted(prompt_id, node)
    if status.get("status_str") == "error":
        raise JobFailed(
            prompt_id, node_id=None, class_type=None,
            exception_type="error", exception_message="ComfyUI reported the job as failed",
        )
    outputs = entry.get("outputs") if isinstance(entry.get("outputs"), dict) else {}
    if not outputs and watch.ws_outputs:
        outputs = watch.ws_outputs
    files, texts = parse_outputs(outputs)
    cached = _all_cached(messages, watch)
    if not files and not texts and not cached:
        raise NoOutputs(prompt_id)
    return JobResult(prompt_id, files, texts, cached, _execution_seconds(messages))


def job_failed(prompt_id: str, data: Mapping[str, Any]) -> JobFailed:
    """An execution_error message as the most specific JobFailed."""
    kind = str(data.get("exception_type") or "error")
    message = str(data.get("exception_message") or "").strip()
    oom = kind.endswith("OutOfMemoryError") or "out of memory" in message.lower()
    cls = OutOfMemory if oom else JobFailed
    if oom:
        message = message.splitlines()[0] if message else "out of memory"
    return cls(
        prompt_id,
        node_id=_str_or_none(data.get("node_id")),
        class_type=_str_or_none(data.get("node_type")),
        exception_type=kind,
        exception_message=message,
        hint=OutOfMemory.HINT if oom else "",
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _all_cached(messages: list[tuple[Any, Any]], watch: JobWatch) -> bool:
    nodes = set(watch.cached_nodes)
    for name, data in messages:
        if name == "execution_cached" and isinstance(data, dict):
            cached = data.get("nodes")
            if isinstance(cached, list):
                nodes.update(str(n) for n in cached)
    return bool(watch.graph) and set(map(str, watch.graph)) <= nodes


def _execution_seconds(messages: list[tuple[Any, Any]]) -> float | None:
    stamps = {name: data.get("timestamp") for name, data in messages if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        seconds = (end - start) / 1000
        return seconds if 0 <= seconds < 10**7 else None
    return None


def parse_outputs(outputs: Mapping[str, Any]) -> tuple[list[OutputFile], list[str]]:
    """Every file and text in a history ``outputs`` map, whatever key a node used."""
    files: list[OutputFile] = []
    texts: list[str] = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        flags = ui.get("animated")
        animated = isinstance(flags, list) and True in flags
        for key, items in ui.items():
            if not isinstance(items, list):
                continue
            if key == "text":
                texts += [item for item in items if isinstance(item, str)]
                continue
            for item in items:
                file = _output_file(str(node_id), key, item, animated)
                if file is not None:
                    files.append(file)
    return files, texts


def _output_file(node_id: str, key: str, item: Any, animated: bool) -> OutputFile | None:
    if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
        return None
    subfolder = item.get("subfolder") if isinstance(item.get("subfolder"), str) else ""
    file_type = item.get("type") if isinstance(item.get("type"), str) else "output"
    return OutputFile(node_id, item["filename"], subfolder, file_type,
                      _media(key, item, animated))


def _media(key: str, item: Mapping[str, Any], animated: bool) -> str:
    name = item["filename"].lower()
    fmt = str(item.get("format") or "")
    if name.endswith(_VIDEO) or fmt.startswith("video/"):
        return "video"
    if key == "audio" or name.endswith(_AUDIO) or fmt.startswith("audio/"):
        return "audio"
    if name.endswith(".gif") or (animated and name.endswith((".webp", ".png"))):
        return "animation"
    if key in ("images", "gifs"):
        return "image"
    return "file"
