"""An async HTTP client for ComfyUI's API.

One method per endpoint, returning parsed JSON (or bytes for files). This is the only
module that knows about httpx: every transport error and every unexpected reply becomes
an error from ``comfy_mcp.errors`` here, with the URL and what to do.

The WebSocket event stream lives in ``comfy_mcp.events``; job tracking in ``comfy_mcp.jobs``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import anyio
import httpx

from comfy_mcp.errors import (
    ComfyHTTPError,
    ComfyTimeout,
    ComfyUnreachable,
    InvalidParameter,
    NodeProblem,
    PathRefused,
    PromptRejected,
    UploadTooLarge,
)

logger = logging.getLogger(__name__)

_EXCERPT = 200
_MAX_DOWNLOAD = 512 * 2**20
_FILE_TYPES = ("output", "input", "temp")


class _Shared:
    """One request whose answer several callers wait for."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.ok = False
        self.value: Any = None
        self.error: Exception | None = None


@dataclass(frozen=True)
class Submitted:
    """ComfyUI's answer to POST /prompt."""

    prompt_id: str
    number: float
    # Outputs ComfyUI dropped while still queueing the rest (HTTP 200 with node_errors).
    dropped: list[NodeProblem] = field(default_factory=list)


class ComfyClient:
    """Talks HTTP to one ComfyUI server.

    ``base_url`` may carry a path prefix (a reverse proxy's ``/comfy``); every endpoint is
    joined under it. Give ``http`` to share or inject an ``httpx.AsyncClient`` (tests pass
    one with a mock transport); otherwise the client owns one and closes it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.max_download = _MAX_DOWNLOAD
        self._owns_http = http is None
        self._in_flight: dict[str, _Shared] = {}
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers=self.headers,
            follow_redirects=False,
            trust_env=False,
            verify=_tls_for(self.base_url),
        )

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- endpoints ---------------------------------------------------------------------

    async def system_stats(self) -> dict[str, Any]:
        return await self._json("GET", "/system_stats")

    async def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        path = "/object_info" if class_type is None else f"/object_info/{_segment(class_type)}"
        return await self._shared_json(path)

    async def models(self, folder: str) -> list[str]:
        """File names in one model folder (``checkpoints``, ``loras``, ...)."""
        return await self._json("GET", f"/models/{_segment(folder)}")

    async def model_folders(self) -> list[str]:
        return await self._json("GET", "/models")

    async def queue(self) -> dict[str, Any]:
        return await self._shared_json("/queue")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None while ComfyUI has none."""
        data = await self._json("GET", f"/history/{_segment(prompt_id)}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    async def submit(
        self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str
    ) -> Submitted:
        """Queue an API-format graph under a prompt id we chose."""
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        response = await self._send("POST", "/prompt", json=body, expect=(200, 400))
        data = _parse_json(response)
        if response.status_code == 400:
            raise prompt_rejected(data, graph)
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            raise ComfyHTTPError(
                "POST", str(response.url), 200, _excerpt(response.text),
                "The reply has no prompt_id; check COMFYUI_URL points at ComfyUI itself "
                "and not at a page that redirects elsewhere",
            )
        dropped = node_problems(data.get("node_errors"), graph)
        return Submitted(data["prompt_id"], data.get("number", 0), dropped)

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """Download one file exactly as history named it."""
        if type not in _FILE_TYPES:
            raise InvalidParameter("type", f"{type!r} is not a ComfyUI file type; it is one of "
                                   "output, input or temp")
        return await _retrying(lambda: self._view_once(filename, subfolder, type))

    async def _view_once(self, filename: str, subfolder: str, type: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        url = self.url("/view")
        deadline = max(self.timeout * 4, 120.0)
        with _translate_errors(url, deadline), anyio.fail_after(deadline):
            async with self._http.stream("GET", url, params=params) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _status_error("GET", response)
                return await _read_capped(response, self.max_download)

    async def upload_image(
        self, data: bytes, filename: str, *, subfolder: str = "", overwrite: bool = False
    ) -> dict[str, Any]:
        """Store an image in ComfyUI's input folder; use the returned ``name``."""
        files = {"image": (filename, data, "application/octet-stream")}
        form = {"type": "input", "subfolder": subfolder}
        if overwrite:
            form["overwrite"] = "true"
        response = await self._send("POST", "/upload/image", files=files, data=form)
        return _parse_json(response)

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is the one running (a no-op otherwise)."""
        await self._send("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_ids: list[str]) -> None:
        """Remove pending jobs from the queue (a running job is not touched)."""
        await self._send("POST", "/queue", json={"delete": prompt_ids})

    # -- plumbing ----------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    async def _shared_json(self, path: str) -> Any:
        """GET ``path``; callers asking while a request for it is out share its answer,
        which they must not change. Many jobs followed at once then cost one request."""
        shared = self._in_flight.get(path)
        if shared is not None:
            await shared.done.wait()
            if shared.error is not None:
                raise shared.error
            if shared.ok:
                return shared.value
            return await self._shared_json(path)  # its caller was cancelled: ask again
        shared = self._in_flight[path] = _Shared()
        try:
            shared.value = await self._json("GET", path)
            shared.ok = True
            return shared.value
        except Exception as exc:
            shared.error = exc
            raise
        finally:
            del self._in_flight[path]
            shared.done.set()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _parse_json(await self._send(method, path, **kwargs))

    async def _send(
        self, method: str, path: str, *, expect: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        if method != "GET":
            return await self._send_once(method, path, expect, **kwargs)
        return await _retrying(lambda: self._send_once(method, path, expect, **kwargs))

    async def _send_once(
        self, method: str, path: str, expect: tuple[int, ...], **kwargs: Any
    ) -> httpx.Response:
        url = self.url(path)
        # httpx's timeout is per read; a server that drips bytes needs a total deadline too.
        with _translate_errors(url, self.timeout), anyio.fail_after(self.timeout * 2):
            response = await self._http.request(method, url, **kwargs)
        logger.debug("%s %s -> %s", method, url, response.status_code)
        if response.status_code not in expect:
            raise _status_error(method, response)
        return response


def _tls_for(base_url: str) -> ssl.SSLContext | bool:
    """Verify certificates for https. For plain http no TLS is ever negotiated (redirects
    are not followed), so give httpx a context without the CA store, whose loading is
    about 20 ms of every start-up; that context trusts nothing and could never connect."""
    if urlsplit(base_url).scheme == "https":
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@contextmanager
def _translate_errors(url: str, timeout: float) -> Iterator[None]:
    """Turn httpx's transport errors into ours, keeping the cause."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise ComfyUnreachable(_origin(url), "connection timed out") from exc
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise ComfyTimeout(url, timeout) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise InvalidParameter("request", f"cannot be sent to ComfyUI ({exc}); check the "
                               "names and ids given") from exc
    except httpx.ConnectError as exc:
        raise ComfyUnreachable(_origin(url), _reason(exc)) from exc
    except httpx.TransportError as exc:
        raise ComfyUnreachable(_origin(url), _reason(exc)) from exc


_RETRY_DELAYS = (0.25, 1.0)
_PROXY_BLIPS = (502, 503, 504)

T = TypeVar("T")


async def _retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a read-only request, again after a short pause if a proxy in front of ComfyUI
    blipped (502/503/504) or the connection broke mid-way. Refused connections and
    timeouts are not retried: they would only make the error arrive later."""
    for delay in _RETRY_DELAYS:
        try:
            return await attempt()
        except ComfyHTTPError as exc:
            if exc.status not in _PROXY_BLIPS:
                raise
            logger.info("retrying after HTTP %s from %s", exc.status, exc.url)
        except ComfyUnreachable as exc:
            if "refused" in exc.reason or "not found" in exc.reason:
                raise
            logger.info("retrying after a broken connection: %s", exc.reason)
        await anyio.sleep(delay)
    return await attempt()


def _segment(value: str) -> str:
    """One path segment, percent-encoded: an id or name can never change the path."""
    return quote(str(value), safe="")


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ComfyHTTPError(
                "GET", str(response.url), response.status_code, "",
                f"The file is larger than {limit // 2**20} MiB, the most comfy-mcp downloads; "
                "it stays on the ComfyUI server",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """The root cause of a transport error in a few words."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text[:_EXCERPT]


def _status_error(method: str, response: httpx.Response) -> ComfyHTTPError:
    status = response.status_code
    url = str(response.url)
    excerpt = _excerpt(response.text)
    if status == 413:
        return UploadTooLarge(
            method, url, status, excerpt,
            "The file is larger than ComfyUI accepts; send a smaller or compressed image, "
            "or start ComfyUI with a larger --max-upload-size (in MB)",
        )
    if status in (400, 403) and "/view" in url or status == 400 and "/upload/" in url:
        return PathRefused(method, url, status, excerpt, "ComfyUI refused the file path")
    if status == 404 and "/view" in url:
        return ComfyHTTPError(
            method, url, status, excerpt,
            "The file does not exist on the ComfyUI server (temporary previews are deleted "
            "when ComfyUI restarts)",
        )
    if 300 <= status < 400:
        return ComfyHTTPError(
            method, url, status, f"redirect to {_redirect_origin(response)}",
            "comfy-mcp does not follow redirects (credentials must not reach another "
            "host); set COMFYUI_URL to the final address",
        )
    if status in (502, 503, 504):
        return ComfyHTTPError(
            method, url, status, excerpt,
            "A proxy in front of ComfyUI could not reach it; check that ComfyUI is running",
        )
    if status == 404:
        return ComfyHTTPError(
            method, url, status, excerpt,
            "Check that COMFYUI_URL points at ComfyUI (including any path prefix)",
        )
    return ComfyHTTPError(method, url, status, excerpt)


def _redirect_origin(response: httpx.Response) -> str:
    """Where a redirect points, as scheme://host[:port] only.

    The path and query of a Location can carry tokens (single sign-on pages do), and a
    login can sit before the host: none of that goes into a message.
    """
    location = response.headers.get("location")
    if not location:
        return "an address it did not give"
    try:
        target = httpx.URL(str(response.url)).join(location)
        host = target.host
    except (httpx.InvalidURL, ValueError):
        return "an address that is not a valid URL"
    if not target.scheme or not host:
        return "an address that is not a valid URL"
    if ":" in host:
        host = f"[{host}]"
    port = f":{target.port}" if target.port is not None else ""
    return f"{target.scheme}://{host}{port}"


def _parse_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ComfyHTTPError(
            response.request.method, str(response.url), response.status_code,
            _excerpt(response.text),
            "Expected JSON; check COMFYUI_URL points at ComfyUI itself",
        ) from None


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def _excerpt(text: str) -> str:
    """The first ~200 characters of a body, with HTML tags and runs of space removed."""
    text = _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


# -- POST /prompt 400 bodies ---------------------------------------------------------------


def prompt_rejected(data: Any, graph: Mapping[str, Any]) -> PromptRejected:
    """Describe a 400 from POST /prompt in words, node by node."""
    if not isinstance(data, dict):
        return PromptRejected(_excerpt(str(data)))
    error = data.get("error")
    if isinstance(error, str):  # very old servers: {"error": "no prompt", "node_errors": []}
        return PromptRejected(error, node_problems(data.get("node_errors"), graph))
    error = error if isinstance(error, dict) else {}
    kind = error.get("type", "")
    summary = str(error.get("message") or kind or "unknown reason")
    if kind in ("missing_node_type", "invalid_prompt") and error.get("details"):
        summary += f" ({error['details']})"
    if kind == "prompt_no_outputs":
        summary = "the workflow has no output node (add a SaveImage or PreviewImage node)"
    return PromptRejected(summary, node_problems(data.get("node_errors"), graph))


def node_problems(node_errors: Any, graph: Mapping[str, Any]) -> list[NodeProblem]:
    """Flatten ComfyUI's ``node_errors`` into one NodeProblem per error."""
    if not isinstance(node_errors, dict):
        return []
    problems: list[NodeProblem] = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        node = graph.get(str(node_id))
        title = None
        if isinstance(node, dict):
            title = (node.get("_meta") or {}).get("title")
        class_type = str(entry.get("class_type", "?"))
        for err in entry.get("errors") or []:
            if isinstance(err, dict):
                problems.append(_problem(str(node_id), class_type, title, err))
    return problems


def _problem(node_id: str, class_type: str, title: str | None, err: dict) -> NodeProblem:
    extra = err.get("extra_info") if isinstance(err.get("extra_info"), dict) else {}
    input_name = extra.get("input_name")
    message = str(err.get("message", "invalid"))
    details = str(err.get("details", "") or "")
    kind = err.get("type")
    if kind == "value_not_in_list":
        message = _not_in_list(extra, details)
    elif kind in ("value_smaller_than_min", "value_bigger_than_max"):
        message = f"{message}"
    elif kind == "required_input_missing":
        message = "a required input is missing"
    elif details and details != input_name:
        message = f"{message}: {details}"
    if "Invalid image file" in details:
        message += " (upload the image with upload_image first and use the name it returns)"
    return NodeProblem(node_id, class_type, message, input_name=input_name, title=title)


def _not_in_list(extra: dict, details: str) -> str:
    received = extra.get("received_value")
    config = extra.get("input_config")
    options = config[0] if isinstance(config, list) and config else None
    if isinstance(options, list):
        if not options:
            return f"{received!r} is not available: this ComfyUI has no files to choose from"
        shown = ", ".join(map(str, options[:20])) + (" …" if len(options) > 20 else "")
        return f"{received!r} is not one of the available values: {shown}"
    return f"value not in the list of allowed values ({details})"
