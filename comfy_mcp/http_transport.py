"""``comfy-mcp serve --http``: MCP over streamable HTTP, safe to leave running.

Whoever can call these tools can queue work on the user's GPU, read images from the
allowed folders and upload them. So:

* By default the server binds 127.0.0.1 only.
* Against DNS rebinding (a web page whose host name suddenly resolves to 127.0.0.1), the
  SDK's transport security checks ``Host`` and ``Origin`` against the loopback names on
  our port; ``RequestGuard`` also refuses any ``Origin`` that is not the ``Host`` the
  request was sent to, on every path, whatever the bind address.
* Bound to any other address, the server refuses to start without
  ``COMFY_MCP_HTTP_TOKEN``, and then every request must carry
  ``Authorization: Bearer <token>`` (compared in constant time). A token that is set is
  required on loopback too.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from comfy_mcp.errors import ConfigError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "RequestGuard",
    "body_limit",
    "build_app",
    "check_exposure",
    "is_loopback",
    "serve_http",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "COMFY_MCP_HTTP_TOKEN"
MIN_TOKEN_LENGTH = 16
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, environ: Mapping[str, str]) -> str | None:
    """The bearer token to require for a server bound to ``host`` (None: no token).

    Raises ``ConfigError``, before anything is bound, when ``host`` is not loopback and
    no usable token is set. The token is never part of a message.
    """
    token = (environ.get(TOKEN_ENV) or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{TOKEN_ENV} is shorter than {MIN_TOKEN_LENGTH} characters; use a long random "
            "value, e.g. from: python -c \"import secrets; print(secrets.token_urlsafe(32))\""
        )
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach that "
            "address could run jobs on your ComfyUI and read or upload your images. Set "
            f"{TOKEN_ENV} to a long random secret (clients then send 'Authorization: "
            "Bearer <token>'), or listen on 127.0.0.1 (the default)"
        )
    return token


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """The SDK's Host/Origin allowlist: loopback names on exactly our port.

    For a non-loopback bind the names clients use cannot be known (a LAN address, a
    proxy's name), so the SDK check is off there: the token protects those servers, and
    ``RequestGuard`` still refuses cross-origin requests.
    """
    if not is_loopback(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = list(_LOOPBACK_NAMES)
    bound = f"[{host.strip('[]')}]" if ":" in host else host
    if bound.lower() not in names:
        names.append(bound)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:{port}" for name in names],
        allowed_origins=[f"http://{name}:{port}" for name in names],
    )


class RequestGuard:
    """ASGI middleware: a bearer token (when set) and same-origin requests only.

    ``Origin`` is sent by browsers on cross-site requests; when present it must name
    the same host and port as ``Host``, or the request gets 403 (``null`` included).
    Checked before the MCP app sees anything, on every path and method.
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        problem = self._refusal(headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, text = problem
        client = scope.get("client") or ("?", 0)
        logger.warning("refused %s %s from %s: %s", scope.get("method", "WS"),
                       scope.get("path", "?"), client[0], text)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        extra = [(b"www-authenticate", b'Bearer realm="comfy-mcp"')] if status == 401 else []
        await _plain(send, status, text, extra)

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, headers.get("host", "")):
            return 403, "cross-origin request refused"
        if self._token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            # compare_digest on bytes of any length; the scheme is case-insensitive.
            valid = scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), self._token
            )
            if not valid:
                return 401, "missing or wrong bearer token"
        return None


def body_limit(upload_max_bytes: int) -> int:
    """Largest request body to accept: an ``upload_image`` of the largest allowed size,
    base64 (4/3 of the bytes), plus room for the JSON-RPC message around it."""
    return upload_max_bytes * 4 // 3 + 2**20


def build_app(
    server: MCPServer,
    *,
    host: str,
    port: int,
    token: str | None,
    max_body_bytes: int = 4 * 2**20,
) -> ASGIApp:
    """The ASGI app for ``server`` bound at ``host:port``, guarded as described above."""
    app = server.streamable_http_app(
        transport_security=transport_security(host, port),
        host=host,
        max_request_body_size=max_body_bytes,
    )
    return RequestGuard(app, token=token)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 picks a free port)."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    return socket.create_server((bare, port), family=family, reuse_port=False)


async def serve_http(
    server: MCPServer,
    *,
    host: str,
    port: int,
    token: str | None,
    max_body_bytes: int = 4 * 2**20,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``server`` at ``http://host:port/mcp`` until cancelled."""
    import uvicorn

    sock = sock or bind(host, port)
    port = sock.getsockname()[1]
    app = build_app(server, host=host, port=port, token=token, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, ws="none", lifespan="on",
        server_header=False, timeout_graceful_shutdown=3,
    )
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    logger.info("MCP over HTTP at http://%s:%d/mcp%s", shown, port,
                " (bearer token required)" if token else "")
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers, lower-cased; a repeated Host or Origin counts as a bad value."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in found and name in ("host", "origin", "authorization"):
            value = "\x00duplicate"
        found[name] = value
    return found


def _same_origin(origin: str, host: str) -> bool:
    """``Origin: scheme://h[:p]`` names the same host and port as ``Host: h[:p]``."""
    if not host or any(char in host for char in "@/\\?#"):
        return False
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.path or parts.query:
            return False
        origin_host, origin_port = parts.hostname, parts.port
        target = urlsplit(f"//{host}")
        target_host, target_port = target.hostname, target.port
    except ValueError:
        return False
    if not origin_host or not target_host or parts.username is not None:
        return False
    default = 443 if parts.scheme == "https" else 80
    return origin_host == target_host and (origin_port or default) == (target_port or default)


async def _plain(send: Send, status: int, text: str, extra: list[Any]) -> None:
    body = text.encode() + b"\n"
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()), *extra],
    })
    await send({"type": "http.response.body", "body": body})
