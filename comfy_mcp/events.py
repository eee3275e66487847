"""ComfyUI's WebSocket event stream: one socket per client, events routed by prompt id.

ComfyUI sends a job's events only to the socket whose ``clientId`` equals the job's
``client_id``, so every job this process submits carries the one id of this stream. The
stream reconnects with backoff when the socket drops; while it is down, jobs are followed
by polling (see ``comfy_mcp.jobs``), so a drop never loses a job.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 10.0


class Subscriber(Protocol):
    """Receives the events of one prompt id (and every queue ``status`` broadcast)."""

    def deliver(self, kind: str, data: Mapping[str, Any]) -> None: ...

    def connection_changed(self, connected: bool) -> None: ...


def websocket_url(base_url: str, client_id: str) -> str:
    """``http(s)://host[:port][/prefix]`` -> ``ws(s)://host[:port][/prefix]/ws?clientId=``."""
    scheme, rest = base_url.split("://", 1)
    ws_scheme = "wss" if scheme == "https" else "ws"
    return f"{ws_scheme}://{rest}/ws?clientId={quote(client_id)}"


class EventStream:
    """Keeps one WebSocket to ComfyUI open and routes its events to subscribers."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        client_id: str | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self.url = websocket_url(base_url, self.client_id)
        self._headers = dict(headers or {})
        self._open_timeout = open_timeout
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._connected = anyio.Event()
        self._is_connected = False
        self._first_attempt = anyio.Event()  # set once the first connect succeeded or failed
        self.connections = 0  # how many times a socket was opened (for tests and benches)

    @property
    def connected(self) -> bool:
        return self._is_connected

    def subscribe(self, prompt_id: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(prompt_id, []).append(subscriber)

    def unsubscribe(self, prompt_id: str, subscriber: Subscriber) -> None:
        listeners = self._subscribers.get(prompt_id, [])
        if subscriber in listeners:
            listeners.remove(subscriber)
        if not listeners:
            self._subscribers.pop(prompt_id, None)

    def _all(self) -> list[Subscriber]:
        return [s for listeners in self._subscribers.values() for s in listeners]

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the socket; True if it is open."""
        with anyio.move_on_after(timeout):
            await self._connected.wait()
        return self._is_connected

    async def wait_first_attempt(self, timeout: float) -> bool:
        """At start-up, wait until the first connection attempt has an outcome.

        Later a down socket is not waited for: jobs are followed by polling meanwhile.
        """
        with anyio.move_on_after(timeout):
            await self._first_attempt.wait()
        return self._is_connected

    async def run(self) -> None:
        """Connect, read, reconnect with backoff; runs until cancelled."""
        backoff = 0.5
        while True:
            try:
                socket = await self._open()
                try:
                    backoff = 0.5
                    self._set_connected(True)
                    await self._read(socket)
                finally:
                    await _close(socket)
                logger.info("ComfyUI WebSocket closed; reconnecting")
            except (OSError, WebSocketException, TimeoutError) as exc:
                logger.info("ComfyUI WebSocket unavailable (%s); following jobs by polling", exc)
            finally:
                self._set_connected(False)
                self._first_attempt.set()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _open(self) -> ClientConnection:
        return await _NoRedirectConnect(
            self.url,
            additional_headers=self._headers or None,
            open_timeout=self._open_timeout,
            proxy=None,
            max_size=64 * 2**20,
            user_agent_header="comfy-mcp",
            logger=_HANDSHAKE_LOGGER,
        )

    async def _read(self, socket: ClientConnection) -> None:
        self.connections += 1
        async for message in socket:
            if isinstance(message, str):
                self._dispatch_text(message)

    def _dispatch_text(self, message: str) -> None:
        try:
            event = json.loads(message)
            kind, data = event["type"], event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            logger.debug("ignoring malformed WebSocket message %.200r", message)
            return
        if not isinstance(kind, str) or not isinstance(data, dict):
            return
        prompt_id = data.get("prompt_id")
        if kind == "status":
            targets = self._all()
        elif isinstance(prompt_id, str) and prompt_id in self._subscribers:
            targets = list(self._subscribers[prompt_id])
        else:
            return
        for subscriber in targets:
            try:
                subscriber.deliver(kind, data)
            except Exception:  # one subscriber's bug must not end the socket for all jobs
                logger.exception("a %s event could not be handled", kind)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._is_connected:
            return
        self._is_connected = connected
        if connected:
            self._connected.set()
            self._first_attempt.set()
        else:
            self._connected = anyio.Event()
        for subscriber in self._all():
            subscriber.connection_changed(connected)


class _NoRedirectConnect(connect):
    """``connect`` that never follows a redirect.

    websockets follows 3xx and strips only Authorization and Cookie when the origin
    changes, so custom credential headers would reach the other host; the HTTP client
    does not follow redirects either. A redirect ends the attempt (InvalidStatus).
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class _NoDebug(logging.LoggerAdapter):
    """websockets logs every handshake header at DEBUG, credentials included: never."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_HANDSHAKE_LOGGER = _NoDebug(logging.getLogger("websockets.client"))


async def _close(socket: ClientConnection) -> None:
    """Close the socket even when our task is being cancelled (no leaked transport)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        await socket.close()
    socket.transport.abort()
