"""A fake ComfyUI for tests: real HTTP and WebSocket on 127.0.0.1, scripted faults.

It follows shared/comfyui-api.md. Where ComfyUI versions differ it behaves like
**0.3.75**: any ``prompt_id`` is accepted and stored as ``str(value)`` (JSON ``null``
becomes ``"None"``), unknown classes give 400 ``invalid_prompt``, ``SaveImage`` has
``output: []``. Other choices:

* One worker runs queued jobs one at a time, lowest ``number`` first, and sends the
  WebSocket sequence of §9 to the socket of the job's ``client_id``: ``status`` (put and
  start), ``execution_start``, ``execution_cached``, per node ``progress_state`` /
  ``executing`` / ``progress`` / ``executed``, then ``execution_success`` (or
  ``execution_error`` / ``execution_interrupted``), the history write, ``status`` and
  ``executing {node: null}`` last.
* Node results are cached by the signature of their inputs (like ComfyUI, but the cache
  never forgets): an identical graph runs nothing and reports the first run's files.
* ``SaveImage`` and ``PreviewImage`` write real PNGs (Pillow), served by ``/view``. The
  image size comes from ``EmptyLatentImage``/``EmptyImage``, the colour from the seed.

Tests steer it through ``fake.script`` (a :class:`Script`), ``fake.fault(...)`` for
HTTP faults on chosen routes, and ``await fake.restart()``; they inspect ``fake.seen``
(every HTTP request), ``fake.ws_clients`` (every accepted socket) and ``fake.history``.

    async with FakeComfy.serve() as fake:
        fake.script.duration = 0.5
        ...
"""

from __future__ import annotations

import io
import json
import posixpath
import random
import socket
import string
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

Handler = Callable[[Request], Awaitable[Response]]

# -- node definitions (GET /object_info) ----------------------------------------------------

CHECKPOINTS = ["sd15-tiny.safetensors", "SDXL/sdxl-base.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "beta"]
MODEL_FOLDERS = {"checkpoints": CHECKPOINTS, "loras": [], "vae": [], "embeddings": []}
_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _int(default: int, low: int, high: int, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": low, "max": high, **extra}]


def _float(default: float, low: float, high: float, step: float) -> list[Any]:
    return ["FLOAT", {"default": default, "min": low, "max": high, "step": step}]


def _node(
    name: str,
    display: str,
    category: str,
    required: dict[str, list[Any]],
    outputs: tuple[str, ...] = (),
    *,
    output_node: bool = False,
) -> dict[str, Any]:
    """One class as 0.3.75's /object_info describes a V1 node."""
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if output_node:
        inputs["hidden"] = dict(_HIDDEN)
        order["hidden"] = list(_HIDDEN)
    return {
        "input": inputs, "input_order": order, "output": list(outputs),
        "output_is_list": [False] * len(outputs), "output_name": list(outputs),
        "name": name, "display_name": display, "description": "", "python_module": "nodes",
        "category": category, "output_node": output_node,
    }


def _object_info() -> dict[str, dict[str, Any]]:
    image = {"images": ["IMAGE"]}
    nodes = [
        _node("KSampler", "KSampler", "sampling", {
            "model": ["MODEL"],
            "seed": _int(0, 0, 2**64 - 1, control_after_generate=True),
            "steps": _int(20, 1, 10000),
            "cfg": _float(8.0, 0.0, 100.0, 0.1),
            "sampler_name": [SAMPLERS],
            "scheduler": [SCHEDULERS],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "denoise": _float(1.0, 0.0, 1.0, 0.01),
        }, ("LATENT",)),
        _node("CheckpointLoaderSimple", "Load Checkpoint", "loaders",
              {"ckpt_name": [CHECKPOINTS, {"tooltip": "The checkpoint to load."}]},
              ("MODEL", "CLIP", "VAE")),
        _node("EmptyLatentImage", "Empty Latent Image", "latent", {
            "width": _int(512, 16, 16384, step=8),
            "height": _int(512, 16, 16384, step=8),
            "batch_size": _int(1, 1, 4096),
        }, ("LATENT",)),
        _node("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning", {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
            "clip": ["CLIP"],
        }, ("CONDITIONING",)),
        _node("VAEDecode", "VAE Decode", "latent", {"samples": ["LATENT"], "vae": ["VAE"]},
              ("IMAGE",)),
        _node("SaveImage", "Save Image", "image",
              {**image, "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
              output_node=True),
        _node("PreviewImage", "Preview Image", "image", image, output_node=True),
        _node("EmptyImage", "EmptyImage", "image", {
            "width": _int(512, 1, 16384, step=1),
            "height": _int(512, 1, 16384, step=1),
            "batch_size": _int(1, 1, 4096),
            "color": _int(0, 0, 0xFFFFFF, step=1, display="color"),
        }, ("IMAGE",)),
        _node("ImageInvert", "Invert Image", "image", {"image": ["IMAGE"]}, ("IMAGE",)),
    ]
    return {node["name"]: node for node in nodes}


OBJECT_INFO = _object_info()

# -- scripting ----------------------------------------------------------------------------

OOM_MESSAGE = (
    "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size "
    "to a large number.\n"
)
TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"
BAD_GATEWAY = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass
class Failure:
    """An exception a node raises while the job runs (sent as ``execution_error``)."""

    node_id: str
    exception_type: str = "RuntimeError"
    message: str = "mat1 and mat2 shapes cannot be multiplied (77x2048 and 768x320)\n"

    @classmethod
    def oom(cls, node_id: str = "3") -> Failure:
        return cls(node_id, "torch.OutOfMemoryError", OOM_MESSAGE)


@dataclass
class Fault:
    """A scripted HTTP answer. ``status=None`` only delays, then answers normally.

    ``after=True`` runs the real handler first (the job is queued) and delays its reply.
    """

    status: int | None = None
    body: str = ""
    content_type: str | None = "text/plain"
    delay: float = 0.0
    after: bool = False

    @classmethod
    def bad_gateway(cls) -> Fault:
        return cls(502, BAD_GATEWAY, "text/html")

    @classmethod
    def server_error(cls) -> Fault:
        return cls(500, TROUBLE)

    @classmethod
    def too_large(cls, limit: int = 104857600, actual: int = 104923136) -> Fault:
        text = f"Maximum request body size {limit} exceeded, actual body size {actual}"
        return cls(413, text)

    @classmethod
    def bad_json(cls) -> Fault:
        return cls(200, '{"prompt_id": "', "application/json")

    @classmethod
    def slow(cls, seconds: float, *, after: bool = False) -> Fault:
        return cls(delay=seconds, after=after)


@dataclass
class Script:
    """How the fake misbehaves; tests change it at any time."""

    duration: float = 0.0  # seconds a job spends in its sampler (spread over the steps)
    steps: int = 2  # progress events of the sampler
    history_delay: float = 0.0  # B01: write history this long after execution_success
    cache: bool = True  # False acts like --cache-none
    cached_outputs_in_history: bool = True  # False: history omits cached outputs (B03 A)
    cached_executed_events: bool = True  # False: no `executed` for cached output nodes
    events_before_reply: bool = False  # B04: run the job before answering POST /prompt
    reply_delay: float = 0.05  # with events_before_reply: pause before the reply
    refuse_ws: bool = False  # answer WebSocket upgrades with 403
    silent_ws: bool = False  # sockets get their first status frame, then nothing
    lose_targeted: bool = False  # B05: per-prompt events never reach a socket
    drop_ws_after: str | None = None  # abort the submitter's socket after this event (once)
    failure: Failure | None = None  # execution_error when this node runs
    interrupt_at: str | None = None  # execution_interrupted when this node starts
    invalid: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> error


@dataclass
class Seen:
    """One HTTP request the fake received."""

    method: str
    path: str  # without the /api prefix
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Job:
    """A queued prompt: the 5-element queue item plus worker state."""

    number: float
    prompt_id: str
    graph: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    finished: anyio.Event = field(default_factory=anyio.Event)
    interrupted: bool = False

    @property
    def client_id(self) -> str | None:
        return self.extra.get("client_id")

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra, list(self.outputs)]


@dataclass
class _FaultRule:
    method: str
    path: str
    fault: Fault
    times: int | None

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and (path == self.path or path.startswith(self.path + "/"))


@dataclass(frozen=True)
class _Picture:
    width: int
    height: int
    batch: int
    color: tuple[int, int, int]


class _Stop(Exception):
    """Ends a run early with an execution_error or execution_interrupted message."""

    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.data = data


class Rejected(Exception):
    """A POST /prompt that validation refuses (HTTP 400)."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(error["message"])
        self.body = {"error": error, "node_errors": node_errors or {}}


# -- graphs -------------------------------------------------------------------------------


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def execution_order(graph: dict[str, Any], outputs: list[str]) -> list[str]:
    """Every node the outputs need, each after the nodes it reads from."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order or node_id not in graph:
            return
        for value in graph[node_id].get("inputs", {}).values():
            if is_link(value):
                visit(str(value[0]))
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate(graph: Any, forced: dict[str, dict[str, Any]]) -> tuple[list[str], dict]:
    """The outputs to run and ``node_errors``, or Rejected, like ``validate_prompt``."""
    if not isinstance(graph, dict):
        raise TypeError("prompt is not an object")  # the real server answers 500
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        where = f"Node ID '#{node_id}'"
        if class_type is None:
            raise Rejected(_error("invalid_prompt", "Cannot execute because a node is "
                                  "missing the class_type property.", where))
        if class_type not in OBJECT_INFO:
            raise Rejected(_error("invalid_prompt", f"Cannot execute because node "
                                  f"{class_type} does not exist.", where))
    outputs = [n for n, node in graph.items() if OBJECT_INFO[node["class_type"]]["output_node"]]
    if not outputs:
        raise Rejected(_error("prompt_no_outputs", "Prompt has no outputs"))
    errors = {n: forced[n] if n in forced else _input_errors(graph, n) for n in graph}
    errors = {n: errs if isinstance(errs, list) else [errs] for n, errs in errors.items() if errs}
    good, node_errors = [], {}
    for output in outputs:
        bad = [n for n in execution_order(graph, [output]) if n in errors]
        if not bad:
            good.append(output)
        for node_id in bad:
            entry = node_errors.setdefault(node_id, {
                "errors": errors[node_id], "dependent_outputs": [],
                "class_type": graph[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}"
                            for output in outputs for e in errors.get(output, []))
        raise Rejected(_error("prompt_outputs_failed_validation",
                              "Prompt outputs failed validation", details), node_errors)
    return good, node_errors


def _input_errors(graph: dict[str, Any], node_id: str) -> list[dict[str, Any]]:
    node = graph[node_id]
    inputs = node.setdefault("inputs", {})
    errors = []
    for name, spec in OBJECT_INFO[node["class_type"]]["input"]["required"].items():
        if name not in inputs:
            errors.append(_error("required_input_missing", "Required input is missing", name,
                                 input_name=name))
        elif is_link(inputs[name]):
            if str(inputs[name][0]) not in graph:
                errors.append(_error("exception_during_validation",
                                     "Exception when validating node", f"'{inputs[name][0]}'",
                                     exception_type="KeyError"))
        else:
            error = _value_error(name, spec, inputs)
            if error:
                errors.append(error)
    return errors


def _value_error(name: str, spec: list[Any], inputs: dict[str, Any]) -> dict | None:
    """Check one widget value and coerce it in place, as ComfyUI does."""
    value, options = inputs[name], spec[1] if len(spec) > 1 else {}
    extra = {"input_name": name, "input_config": spec, "received_value": value}
    if isinstance(spec[0], list):
        if value in spec[0]:
            return None
        shown = spec[0] if len(spec[0]) <= 20 else f"(list of length {len(spec[0])})"
        return _error("value_not_in_list", "Value not in list",
                      f"{name}: '{value}' not in {shown}", **extra)
    if spec[0] not in ("INT", "FLOAT"):
        return None
    try:
        value = inputs[name] = int(value) if spec[0] == "INT" else float(value)
    except (TypeError, ValueError) as exc:
        return _error("invalid_input_type", f"Failed to convert an input value to a "
                      f"{spec[0]} value", name, exception_message=str(exc), **extra)
    if "min" in options and value < options["min"]:
        return _error("value_smaller_than_min",
                      f"Value {value} smaller than min of {options['min']}", name, **extra)
    if "max" in options and value > options["max"]:
        return _error("value_bigger_than_max",
                      f"Value {value} bigger than max of {options['max']}", name, **extra)
    return None


def solid_png(width: int, height: int, color: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A PNG of one colour, as the fake's SaveImage writes them."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def _rgb(number: int) -> tuple[int, int, int]:
    return (number >> 16) & 255, (number >> 8) & 255, number & 255


def _ms() -> int:
    return int(time.time() * 1000)


def _trouble() -> Response:
    return Response(TROUBLE, 500, media_type="text/plain")


def _empty() -> Response:
    """The bodiless 200 of /queue, /interrupt, /history and /free (no Content-Type)."""
    return Response(status_code=200)


def _bare(path: str) -> str:
    return path[4:] if path == "/api" or path.startswith("/api/") else path


def _clean_subfolder(subfolder: str) -> str | None:
    """The normalised subfolder, or None when it leaves its directory."""
    if subfolder.startswith("/") or "\\" in subfolder:
        return None
    normal = posixpath.normpath(subfolder) if subfolder else ""
    if normal == ".":
        return ""
    return None if normal == ".." or normal.startswith("../") else normal


# -- WebSocket plumbing -------------------------------------------------------------------

_TRANSPORT = "fakecomfy.transport"


class _Protocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, handing the app its transport so that the fake can
    drop a socket without a close frame, as a crashed server or a dead link does."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][_TRANSPORT] = self.transport


@dataclass
class _Socket:
    client_id: str
    websocket: WebSocket
    closed: bool = False

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            await self.websocket.send_text(json.dumps({"type": kind, "data": data}))
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True  # gone; the handler unregisters it

    def abort(self) -> None:
        """Close the TCP connection without a close frame (the client sees 1006)."""
        self.closed = True
        self.websocket.scope["extensions"][_TRANSPORT].abort()


class _Server(uvicorn.Server):
    """uvicorn.Server that leaves the test process's signal handlers alone."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# -- the fake -------------------------------------------------------------------------------


class FakeComfy:
    """The fake server's state, routes and worker. Start it with ``FakeComfy.serve()``."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.port = 0
        self.seen: list[Seen] = []
        self.ws_clients: list[str] = []  # clientId of every accepted socket, in order
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, name)
        self.started: list[str] = []  # prompt ids, in the order the worker took them
        self.events: dict[str, list[tuple[str, dict]]] = {}  # prompt id -> events it sent
        self._faults: list[_FaultRule] = []
        self._node_errors: dict[str, dict[str, Any]] = {}  # prompt id -> its 200 node_errors
        self._dropped: set[str] = set()  # prompt ids whose socket drop_ws_after dropped
        self._sockets: list[_Socket] = []
        self._change = anyio.Event()
        self._run_scope: anyio.CancelScope | None = None
        self._listener: tuple[_Server, anyio.Event] | None = None
        self._tasks: Any = None
        self.pending: list[Job] = []
        self._wipe()
        self.app = Starlette(routes=self._routes())

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def serve(cls, script: Script | None = None) -> AsyncIterator[FakeComfy]:
        """Run the fake on a free 127.0.0.1 port until the block ends."""
        fake = cls(script)
        async with anyio.create_task_group() as tasks:
            fake._tasks = tasks
            tasks.start_soon(fake._work)
            await fake._start_listener(0)
            try:
                yield fake
            finally:
                with anyio.CancelScope(shield=True):
                    await fake._stop_listener()
                tasks.cancel_scope.cancel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def restart(self, downtime: float | None = None) -> None:
        """Lose the queue, history, node cache and temp files, and drop every socket,
        as a restarted ComfyUI does. With ``downtime`` the port refuses connections for
        that long; without it the fake comes back at once."""
        for sock in list(self._sockets):
            self._drop(sock)
        if self._run_scope is not None:
            self._run_scope.cancel()
        if downtime is not None:
            await self._stop_listener()
        self._wipe()
        self.files = {key: data for key, data in self.files.items() if key[0] != "temp"}
        if downtime is not None:
            await anyio.sleep(downtime)
            await self._start_listener(self.port)
        self._poke()

    async def _start_listener(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, http="h11", ws=_Protocol, lifespan="off", log_config=None,
            log_level="warning", access_log=False, timeout_graceful_shutdown=1,
            ws_ping_interval=None,
        )
        server, done = _Server(config), anyio.Event()

        async def run() -> None:
            try:
                await server.serve([sock])
            finally:
                sock.close()
                done.set()

        self._tasks.start_soon(run)
        with anyio.fail_after(5):
            while not server.started:
                if done.is_set():
                    raise RuntimeError("the fake ComfyUI did not start")
                await anyio.sleep(0.005)
        self._listener = (server, done)

    async def _stop_listener(self) -> None:
        if self._listener is None:
            return
        server, done = self._listener
        self._listener = None
        server.should_exit = True
        await done.wait()

    def _wipe(self) -> None:
        for job in self.pending:
            job.finished.set()
        self.pending = []
        self.running: Job | None = None
        self.current_node: str | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, tuple[Any, dict[str, Any] | None]] = {}
        self.counter = 0

    # -- helpers for tests --------------------------------------------------------------

    def fault(self, method: str, path: str, fault: Fault, times: int | None = 1) -> None:
        """Answer ``times`` requests (None: all) to ``path`` (and below it) with ``fault``."""
        self._faults.append(_FaultRule(method, path, fault, times))

    def requests(self, method: str, path: str) -> list[Seen]:
        """The requests received for one method and path (prefix match, no /api)."""
        return [s for s in self.seen if s.method == method
                and (s.path == path or s.path.startswith(path + "/"))]

    def put_file(self, filename: str, data: bytes, subfolder: str = "",
                 type: str = "output") -> None:
        self.files[(type, subfolder, filename)] = data

    def outputs_of(self, prompt_id: str) -> list[tuple[str, str, str]]:
        """(filename, subfolder, type) of every file in one history entry."""
        outputs = self.history.get(prompt_id, {}).get("outputs", {})
        return [(i["filename"], i["subfolder"], i["type"])
                for ui in outputs.values() for i in ui.get("images", [])]

    def event_kinds(self, prompt_id: str) -> list[str]:
        return [kind for kind, _ in self.events.get(prompt_id, [])]

    @property
    def running_id(self) -> str | None:
        return self.running.prompt_id if self.running else None

    async def until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:
        """Wait until ``predicate()`` holds; it is checked on every change of state."""
        with anyio.fail_after(timeout):
            while not predicate():
                await self._change.wait()

    def enqueue(self, graph: dict[str, Any], client_id: str | None = None) -> Job:
        """Queue a prompt as another ComfyUI user would (without going through HTTP)."""
        body: dict[str, Any] = {"prompt": graph}
        if client_id is not None:
            body["client_id"] = client_id
        job = self._accept(body)
        self._tasks.start_soon(self._broadcast_status)
        return job

    def _poke(self) -> None:
        self._change.set()
        self._change = anyio.Event()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for rule in self._faults:
            if rule.matches(method, path):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._faults.remove(rule)
                return rule.fault
        return None

    # -- routes ---------------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history_all),
            ("POST", "/history", self._post_history),
            ("GET", "/history/{prompt_id}", self._get_history),
            ("GET", "/view", self._get_view),
            ("POST", "/upload/image", self._post_upload),
            ("GET", "/object_info", self._get_object_info),
            ("GET", "/object_info/{node_class}", self._get_object_info),
            ("GET", "/models", self._get_models),
            ("GET", "/models/{folder}", self._get_models),
            ("GET", "/system_stats", self._get_system_stats),
            ("GET", "/features", self._get_features),
            ("POST", "/free", self._post_free),
        ]
        routes: list[BaseRoute] = []
        for prefix in ("", "/api"):
            routes += [Route(prefix + path, self._endpoint(handler), methods=[method])
                       for method, path, handler in table]
            routes.append(WebSocketRoute(prefix + "/ws", self._websocket))
        return routes

    def _endpoint(self, handler: Handler) -> Handler:
        """Record the request, then apply a scripted fault or call the handler."""

        async def endpoint(request: Request) -> Response:
            path = _bare(request.url.path)
            self.seen.append(Seen(request.method, path, dict(request.query_params),
                                  await request.body(), dict(request.headers)))
            self._poke()
            fault = self._take_fault(request.method, path)
            if fault is None:
                return await handler(request)
            if fault.after:
                response = await handler(request)
                await anyio.sleep(fault.delay)
                return response
            await anyio.sleep(fault.delay)
            if fault.status is None:
                return await handler(request)
            return Response(fault.body, fault.status, media_type=fault.content_type)

        return endpoint

    async def _get_prompt(self, request: Request) -> Response:
        return JSONResponse({"exec_info": {"queue_remaining": self._remaining()}})

    async def _post_prompt(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _trouble()
        try:
            job = self._accept(body)
        except Rejected as exc:
            return JSONResponse(exc.body, 400)
        except (TypeError, AttributeError):
            return _trouble()
        await self._broadcast_status()
        if self.script.events_before_reply:
            await job.finished.wait()
            await anyio.sleep(self.script.reply_delay)
        reply = {"prompt_id": job.prompt_id, "number": job.number,
                 "node_errors": self._node_errors.pop(job.prompt_id, {})}
        return JSONResponse(reply)

    def _accept(self, body: Any) -> Job:
        """Number, validate and queue one POST /prompt body (0.3.75 rules)."""
        number: float = self.counter
        self.counter += 1
        if not isinstance(body, dict) or "prompt" not in body:
            raise Rejected(_error("no_prompt", "No prompt provided", "No prompt provided"))
        if "number" in body:
            number = float(body["number"])
        prompt_id = str(body["prompt_id"]) if "prompt_id" in body else str(uuid.uuid4())
        outputs, node_errors = validate(body["prompt"], self.script.invalid)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        extra["create_time"] = _ms()
        job = Job(number, prompt_id, body["prompt"], extra, outputs)
        self._node_errors[prompt_id] = node_errors
        self.pending.append(job)
        self._poke()
        return job

    async def _get_queue(self, request: Request) -> Response:
        running = [self.running.item()] if self.running else []
        return JSONResponse({"queue_running": running,
                             "queue_pending": [job.item() for job in self.pending]})

    async def _post_queue(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _trouble()
        if not isinstance(body, dict):
            return _empty()
        doomed = list(self.pending) if body.get("clear") else []
        if isinstance(body.get("delete"), list):
            doomed += [job for job in self.pending if job.prompt_id in body["delete"]]
        for job in doomed:
            if job in self.pending:
                self.pending.remove(job)
            job.finished.set()
        if doomed:
            self._poke()
            await self._broadcast_status()
        return _empty()

    async def _post_interrupt(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            return _trouble()
        job, target = self.running, body.get("prompt_id")
        if job is not None and (target is None or target == job.prompt_id):
            job.interrupted = True
            self._poke()
        return _empty()

    async def _get_history_all(self, request: Request) -> Response:
        entries = list(self.history.items())
        limit = request.query_params.get("max_items")
        if limit is not None:
            count = int(limit)
            entries = entries[-count:] if count > 0 else []
        return JSONResponse(dict(entries))

    async def _post_history(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _trouble()
        if isinstance(body, dict) and body.get("clear"):
            self.history.clear()
        if isinstance(body, dict) and isinstance(body.get("delete"), list):
            for prompt_id in body["delete"]:
                self.history.pop(prompt_id, None)
        return _empty()

    async def _get_history(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    async def _get_view(self, request: Request) -> Response:
        query = request.query_params
        filename, kind = query.get("filename"), query.get("type", "output")
        if filename is None:
            return Response(status_code=404)
        if not filename or filename.startswith("/") or ".." in filename:
            return Response(status_code=400)
        if kind not in ("output", "input", "temp"):
            return Response(status_code=400)
        subfolder = _clean_subfolder(query.get("subfolder", ""))
        if subfolder is None:
            return Response(status_code=403)
        data = self.files.get((kind, subfolder, posixpath.basename(filename)))
        if data is None:
            return Response(status_code=404)
        media = "image/png" if filename.endswith(".png") else "application/octet-stream"
        return Response(data, media_type=media)

    async def _post_upload(self, request: Request) -> Response:
        async with request.form() as form:
            image = form.get("image")
            if image is None:
                return Response(status_code=400)
            kind, subfolder = str(form.get("type", "input")), str(form.get("subfolder", ""))
            overwrite = form.get("overwrite") in ("true", "1")
            if isinstance(image, str) or not image.filename:
                return _trouble()
            if kind not in ("output", "input", "temp"):
                return _trouble()
            data = await image.read()
            folder = _clean_subfolder(subfolder)
            if folder is None:
                return Response(status_code=400)
            name = image.filename if overwrite else self._free_name(kind, folder,
                                                                     image.filename, data)
        self.files[(kind, folder, name)] = data
        return JSONResponse({"name": name, "subfolder": subfolder, "type": kind})

    def _free_name(self, kind: str, folder: str, name: str, data: bytes) -> str:
        """``name``, or ``name (n).ext``: identical bytes reuse the existing name."""
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        candidate, number = name, 0
        while (kind, folder, candidate) in self.files:
            if self.files[(kind, folder, candidate)] == data:
                break
            number += 1
            candidate = f"{stem} ({number}){dot}{ext}"
        return candidate

    async def _get_object_info(self, request: Request) -> Response:
        node_class = request.path_params.get("node_class")
        if node_class is None:
            return JSONResponse(OBJECT_INFO)
        info = OBJECT_INFO.get(node_class)
        return JSONResponse({node_class: info} if info else {})

    async def _get_models(self, request: Request) -> Response:
        folder = request.path_params.get("folder")
        if folder is None:
            return JSONResponse(list(MODEL_FOLDERS))
        if folder not in MODEL_FOLDERS:
            return Response(status_code=404)
        return JSONResponse(sorted(MODEL_FOLDERS[folder]))

    async def _get_system_stats(self, request: Request) -> Response:
        memory = 16 * 2**30
        return JSONResponse({
            "system": {"os": "posix", "ram_total": memory, "ram_free": memory // 2,
                       "comfyui_version": "0.3.75", "python_version": "3.12.3",
                       "pytorch_version": "2.8.0+cpu", "embedded_python": False,
                       "argv": ["main.py", "--cpu"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": memory,
                         "vram_free": memory // 2, "torch_vram_total": memory,
                         "torch_vram_free": memory // 2}],
        })

    async def _get_features(self, request: Request) -> Response:
        return JSONResponse({"supports_preview_metadata": True, "max_upload_size": 104857600})

    async def _post_free(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _trouble()
        if isinstance(body, dict) and body.get("free_memory"):
            self.cache.clear()
        return _empty()

    # -- WebSocket --------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        if self.script.refuse_ws:
            await websocket.close()  # before accept: uvicorn answers HTTP 403
            return
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        await websocket.accept()
        sock = _Socket(client_id, websocket)
        self._sockets.append(sock)
        self.ws_clients.append(client_id)
        self._poke()
        status = {"status": {"exec_info": {"queue_remaining": self._remaining()}},
                  "sid": client_id}
        await sock.send("status", status)
        job = self.running
        if job and job.client_id == client_id and self.current_node and not self._quiet():
            await sock.send("executing", {"node": self.current_node})
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            if sock in self._sockets:
                self._sockets.remove(sock)
            self._poke()

    def _quiet(self) -> bool:
        return self.script.silent_ws

    def _remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    async def _broadcast_status(self) -> None:
        if self._quiet():
            return
        data = {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        for sock in list(self._sockets):
            await sock.send("status", data)

    async def _emit(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        """Send one event of a job where ComfyUI would (§9 routing)."""
        self.events.setdefault(job.prompt_id, []).append((kind, data))
        if self._quiet():
            return
        if job.client_id is None:
            if kind in ("progress", "progress_state", "execution_interrupted"):
                for sock in list(self._sockets):
                    await sock.send(kind, data)
            return
        target = [s for s in self._sockets if s.client_id == job.client_id][-1:]
        if not self.script.lose_targeted:
            for sock in target:
                await sock.send(kind, data)
        if self.script.drop_ws_after == kind and job.prompt_id not in self._dropped:
            self._dropped.add(job.prompt_id)  # once per job: a reconnected socket stays
            for sock in target:
                self._drop(sock)

    def _drop(self, sock: _Socket) -> None:
        sock.abort()
        if sock in self._sockets:
            self._sockets.remove(sock)

    # -- the worker -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while not self.pending:
                await self._change.wait()
            job = min(self.pending, key=lambda j: (j.number, j.prompt_id))
            self.pending.remove(job)
            self.running = job
            self.started.append(job.prompt_id)
            self._poke()
            with anyio.CancelScope() as scope:
                self._run_scope = scope
                await self._execute(job)
            self._run_scope = None
            if self.running is job:
                self.running = None
            self.current_node = None
            job.finished.set()
            self._poke()

    async def _execute(self, job: Job) -> None:
        await self._broadcast_status()
        pid = job.prompt_id
        start = {"prompt_id": pid, "timestamp": _ms()}
        await self._emit(job, "execution_start", start)
        order = execution_order(job.graph, job.outputs)
        signatures = {node_id: self._signature(job.graph, node_id) for node_id in order}
        cached = [n for n in order if self.script.cache and signatures[n] in self.cache]
        cached_msg = {"nodes": cached, "prompt_id": pid, "timestamp": _ms()}
        await self._emit(job, "execution_cached", cached_msg)
        messages: list[list[Any]] = [["execution_start", start], ["execution_cached", cached_msg]]
        run = _Run(self, job, signatures, cached)
        try:
            await run.all(order)
            final = ("execution_success", {"prompt_id": pid, "timestamp": _ms()})
        except _Stop as stop:
            final = (stop.kind, stop.data)
        await self._emit(job, *final)
        messages.append(list(final))
        if self.script.history_delay:
            await anyio.sleep(self.script.history_delay)
        self._write_history(job, run.history_outputs(), messages, final[0])
        await self._broadcast_status()
        await self._emit(job, "executing", {"node": None, "prompt_id": pid})

    def _write_history(self, job: Job, outputs: dict, messages: list, final: str) -> None:
        ok = final == "execution_success"
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                for n in outputs}
        status = {"status_str": "success" if ok else "error", "completed": ok,
                  "messages": messages}
        self.history[job.prompt_id] = {"prompt": job.item(), "outputs": outputs,
                                       "status": status, "meta": meta}
        self.running = None  # in the same step as the write, as ComfyUI's task_done does
        self._poke()

    def _signature(self, graph: dict[str, Any], node_id: str) -> str:
        node = graph[node_id]
        inputs = {name: self._signature(graph, str(v[0])) if is_link(v) else v
                  for name, v in sorted(node.get("inputs", {}).items())}
        return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)

    async def _pause(self, job: Job, seconds: float) -> None:
        """Sleep, but wake up at once when the job is interrupted."""
        with anyio.move_on_after(seconds):
            while not job.interrupted:
                await self._change.wait()

    def _save(self, kind: str, picture: _Picture, prefix: str) -> list[dict[str, str]]:
        """Write PNGs like SaveImage (numbered after the files there) or PreviewImage."""
        items = []
        for _ in range(picture.batch):
            if kind == "PreviewImage":
                letters = "".join(random.choices(string.ascii_lowercase, k=5))
                item = {"filename": f"ComfyUI_temp_{letters}_00001_.png", "subfolder": "",
                        "type": "temp"}
            else:
                subfolder, _, name = prefix.rpartition("/")
                number = 1 + sum(1 for t, s, f in self.files
                                 if t == "output" and s == subfolder and f.startswith(name + "_"))
                item = {"filename": f"{name}_{number:05}_.png", "subfolder": subfolder,
                        "type": "output"}
            data = solid_png(picture.width, picture.height, picture.color)
            self.files[(item["type"], item["subfolder"], item["filename"])] = data
            items.append(item)
        return items


class _Run:
    """One execution of a job's nodes, in order, with the scripted endings."""

    def __init__(self, fake: FakeComfy, job: Job, signatures: dict[str, str],
                 cached: list[str]) -> None:
        self.fake, self.job, self.signatures, self.cached = fake, job, signatures, cached
        self.values: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, Any]] = {}  # node id -> UI, as history shows it
        self.fresh: list[str] = []  # nodes that really ran
        self.states: dict[str, dict[str, Any]] = {}

    async def all(self, order: list[str]) -> None:
        slow = next((n for n in order if self.job.graph[n]["class_type"] == "KSampler"),
                    order[-1] if order else None)
        for node_id in order:
            if node_id in self.cached:
                await self._cached(node_id)
            else:
                await self._node(node_id, slow == node_id)

    def history_outputs(self) -> dict[str, dict[str, Any]]:
        if self.fake.script.cached_outputs_in_history:
            return self.outputs
        return {n: ui for n, ui in self.outputs.items() if n not in self.cached}

    async def _cached(self, node_id: str) -> None:
        self.values[node_id], ui = self.fake.cache[self.signatures[node_id]]
        if ui is None:
            return
        self.outputs[node_id] = ui
        if self.fake.script.cached_executed_events:
            await self._send("executed", {"node": node_id, "display_node": node_id,
                                          "output": ui, "prompt_id": self.job.prompt_id})
        await self._progress_state(node_id, "finished", 1, 1)

    async def _node(self, node_id: str, slow: bool) -> None:
        job, script = self.job, self.fake.script
        if job.interrupted or script.interrupt_at == node_id:
            raise self._interrupted(node_id)
        self.fake.current_node = node_id
        await self._progress_state(node_id, "running", 0, 1)
        await self._send("executing", {"node": node_id, "display_node": node_id,
                                       "prompt_id": job.prompt_id})
        if script.failure is not None and script.failure.node_id == node_id:
            raise self._failed(node_id, script.failure)
        if slow:
            await self._ticks(node_id)
        value, ui = self._evaluate(node_id)
        self.values[node_id] = value
        self.fake.cache[self.signatures[node_id]] = (value, ui)
        self.fresh.append(node_id)
        if ui is not None:
            self.outputs[node_id] = ui
            await self._send("executed", {"node": node_id, "display_node": node_id,
                                          "output": ui, "prompt_id": job.prompt_id})
        await self._progress_state(node_id, "finished", 1, 1)

    async def _ticks(self, node_id: str) -> None:
        steps = max(self.fake.script.steps, 1)
        for step in range(1, steps + 1):
            await self.fake._pause(self.job, self.fake.script.duration / steps)
            if self.job.interrupted:
                raise self._interrupted(node_id)
            await self._send("progress", {"value": step, "max": steps,
                                          "prompt_id": self.job.prompt_id, "node": node_id})

    async def _send(self, kind: str, data: dict[str, Any]) -> None:
        await self.fake._emit(self.job, kind, data)

    async def _progress_state(self, node_id: str, state: str, value: int, top: int) -> None:
        pid = self.job.prompt_id
        self.states[node_id] = {"value": value, "max": top, "state": state, "node_id": node_id,
                                "prompt_id": pid, "display_node_id": node_id,
                                "parent_node_id": None, "real_node_id": node_id}
        await self._send("progress_state", {"prompt_id": pid, "nodes": dict(self.states)})

    def _interrupted(self, node_id: str) -> _Stop:
        return _Stop("execution_interrupted", {
            "prompt_id": self.job.prompt_id, "node_id": node_id,
            "node_type": self.job.graph[node_id]["class_type"], "executed": list(self.fresh),
            "timestamp": _ms()})

    def _failed(self, node_id: str, failure: Failure) -> _Stop:
        done = self.cached + self.fresh
        return _Stop("execution_error", {
            "prompt_id": self.job.prompt_id, "node_id": node_id,
            "node_type": self.job.graph[node_id]["class_type"], "executed": done,
            "exception_message": failure.message, "exception_type": failure.exception_type,
            "traceback": ['  File "execution.py", line 1, in execute\n'],
            "current_inputs": {}, "current_outputs": done, "timestamp": _ms()})

    def _evaluate(self, node_id: str) -> tuple[Any, dict[str, Any] | None]:
        """What a node produces: a _Picture for image and latent nodes, plus its UI."""
        node = self.job.graph[node_id]
        kind, inputs = node["class_type"], node.get("inputs", {})

        def arg(name: str) -> Any:
            value = inputs.get(name)
            return self.values.get(str(value[0])) if is_link(value) else value

        if kind == "EmptyLatentImage":
            return _Picture(arg("width") // 8 * 8, arg("height") // 8 * 8,
                            arg("batch_size"), (0, 0, 0)), None
        if kind == "EmptyImage":
            return _Picture(arg("width"), arg("height"), arg("batch_size"),
                            _rgb(arg("color"))), None
        if kind == "KSampler":
            latent = arg("latent_image")
            color = _rgb(random.Random(arg("seed")).randrange(0x1000000))
            return _Picture(latent.width, latent.height, latent.batch, color), None
        if kind == "VAEDecode":
            return arg("samples"), None
        if kind == "ImageInvert":
            picture = arg("image")
            inverted = tuple(255 - c for c in picture.color)
            return _Picture(picture.width, picture.height, picture.batch, inverted), None
        if kind in ("SaveImage", "PreviewImage"):
            prefix = str(inputs.get("filename_prefix", "ComfyUI"))
            if ".." in prefix.split("/"):
                raise self._failed(node_id, Failure(
                    node_id, "Exception", "Saving image outside the output folder is not "
                    "allowed.\n"))
            return None, {"images": self.fake._save(kind, arg("images"), prefix)}
        return None, None
