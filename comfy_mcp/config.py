"""Settings, read from the environment once at start-up.

``Settings.from_env(environ)`` takes the mapping as an argument so tests never touch
``os.environ``. Every variable is optional.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from comfy_mcp.errors import ConfigError
from comfy_mcp.memory import default_db_path

DEFAULT_URL = "http://127.0.0.1:8188"
DEFAULT_UPLOAD_MAX_MB = 50


@dataclass(frozen=True)
class Settings:
    """What comfy-mcp needs to know about its ComfyUI and where to put files."""

    comfyui_url: str = DEFAULT_URL
    output_dir: Path = field(default_factory=lambda: default_output_dir({}))
    http_timeout: float = 30.0
    # How long generate_art waits for a job before returning its prompt id instead.
    wait_limit: float = 600.0
    # When the WebSocket is down, how often we poll /history at most (seconds).
    poll_interval: float = 1.0
    user_workflows_dir: Path | None = None
    # Sent to ComfyUI on every request; secrets, so kept out of repr() and logs.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Folders upload_image may read; None means the working directory and output_dir.
    upload_dirs: tuple[Path, ...] | None = None
    upload_max_bytes: int = DEFAULT_UPLOAD_MAX_MB * 2**20
    # The SQLite generation history; None turns the history off.
    db_path: Path | None = None

    def upload_roots(self) -> list[Path]:
        """The folders ``upload_image`` (and workflow paths) may read files from.

        By default the working directory and the output folder; but a working directory
        that is a file system root or the home folder itself (a server started from ``/``
        or ``~``) would open every file, so it is left out then.
        """
        if self.upload_dirs is not None:
            return list(self.upload_dirs)
        cwd = Path.cwd().resolve()
        too_broad = cwd == Path(cwd.anchor) or cwd == Path.home().resolve()
        return [self.output_dir] if too_broad else [cwd, self.output_dir]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get("COMFYUI_URL") or env.get("COMFY_URL") or DEFAULT_URL
        url, url_login = split_credentials(url)
        workflows = env.get("COMFY_MCP_WORKFLOWS_DIR")
        return cls(
            comfyui_url=normalize_url(url),
            output_dir=_path(env.get("COMFY_MCP_OUTPUT_DIR")) or default_output_dir(env),
            http_timeout=_seconds(env, "COMFY_MCP_HTTP_TIMEOUT", 30.0),
            wait_limit=_seconds(env, "COMFY_MCP_WAIT_LIMIT", 600.0),
            poll_interval=_seconds(env, "COMFY_MCP_POLL_INTERVAL", 1.0),
            user_workflows_dir=_path(workflows),
            headers=_auth_headers(env, url_login),
            upload_dirs=_folders(env.get("COMFY_MCP_UPLOAD_DIRS")),
            upload_max_bytes=_megabytes(env, "COMFY_MCP_UPLOAD_MAX_MB", DEFAULT_UPLOAD_MAX_MB),
            db_path=default_db_path(env),
        )


def normalize_url(url: str) -> str:
    """Check a ComfyUI base URL and drop a trailing slash; a path prefix is kept.

    A ``user:password@`` part is refused here (``split_credentials`` takes it out first),
    so the URL is safe to show in messages and logs.
    """
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(
            f"COMFYUI_URL={shown!r} is not a valid URL; use e.g. http://127.0.0.1:8188"
        ) from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(
            f"COMFYUI_URL={shown!r} is not an http(s) URL; use e.g. http://127.0.0.1:8188"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"COMFYUI_URL={shown!r} must not have a query or fragment")
    if "@" in parts.netloc:
        raise ConfigError(
            f"COMFYUI_URL={shown!r} carries a login; set COMFYUI_BASIC_AUTH instead"
        )
    return url.rstrip("/")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Take ``user:password@`` out of a URL: ``(url without it, (user, password))``.

    The pair is percent-decoded, as a browser does; ``(url, None)`` when there is none.
    """
    url = url.strip()
    with_scheme = url if "://" in url else "http://" + url
    try:
        parts = urlsplit(with_scheme)
    except ValueError:
        return url, None  # normalize_url names the problem
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    bare = urlunsplit(parts._replace(netloc=hostport))
    return bare, (unquote(user), unquote(password))


def redact_url(url: str) -> str:
    """``url`` for messages: a login becomes ``***@``, a query or fragment ``?…``/``#…``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    for mark in "?#":
        head, found, _ = rest.partition(mark)
        rest = head + (mark + "…" if found else "")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def default_output_dir(env: Mapping[str, str]) -> Path:
    """Where images go when COMFY_MCP_OUTPUT_DIR is not set.

    Inside Claude Code the project folder is the natural place; elsewhere the user's
    home, never the process's working directory (which can be a system folder).
    """
    project = env.get("CLAUDE_PROJECT_DIR")
    if project:
        return Path(project) / "comfy-output"
    return Path.home() / "comfy-mcp-output"


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number of seconds") from None
    if not 0 < value < 10**7:  # also refuses nan and inf
        raise ConfigError(f"{key}={raw!r} must be a number of seconds greater than 0")
    return value


def _folders(value: str | None) -> tuple[Path, ...] | None:
    if not value:
        return None
    return tuple(Path(part).expanduser() for part in value.split(os.pathsep) if part.strip())


def _megabytes(env: Mapping[str, str], key: str, default: float) -> int:
    raw = env.get(key)
    if not raw:
        return int(default * 2**20)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number of megabytes") from None
    if not 0 < value < 2**20:  # also refuses nan and inf
        raise ConfigError(f"{key}={raw!r} must be a number of megabytes above 0")
    return int(value * 2**20)


# RFC 9110 field names. Values must be printable ASCII (tab allowed): a CR or LF would
# split the request, and httpx cannot encode other characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")


def _auth_headers(
    env: Mapping[str, str], url_login: tuple[str, str] | None = None
) -> dict[str, str]:
    """Headers for a ComfyUI behind an authenticating proxy.

    Sources: ``COMFYUI_TOKEN`` (bearer), ``COMFYUI_BASIC_AUTH`` (``user:password``), a
    login inside ``COMFYUI_URL``, and ``COMFYUI_HEADERS`` (a JSON object). At most one of
    them may set ``Authorization``. Error messages never repeat a secret value.
    """
    headers = _extra_headers(env.get("COMFYUI_HEADERS"))
    sources = [name for name in headers if name.lower() == "authorization"]
    authorization = headers.pop(sources[0]) if sources else None
    sources = ["COMFYUI_HEADERS"] if sources else []
    token = env.get("COMFYUI_TOKEN", "").strip()
    if token:
        sources.append("COMFYUI_TOKEN")
        authorization = f"Bearer {token}"
    basic = env.get("COMFYUI_BASIC_AUTH")
    if basic:
        user, colon, password = basic.partition(":")
        if not colon or not user:
            raise ConfigError("COMFYUI_BASIC_AUTH must be 'user:password' (value not shown)")
        sources.append("COMFYUI_BASIC_AUTH")
        authorization = _basic(user, password)
    if url_login is not None:
        sources.append("the login in COMFYUI_URL")
        authorization = _basic(*url_login)
    if len(sources) > 1:
        raise ConfigError(f"{' and '.join(sources)} each set a login; keep only one")
    if authorization is not None:
        headers["Authorization"] = authorization
    for name, value in headers.items():
        if not _HEADER_VALUE.match(value):
            where = "COMFYUI_HEADERS" if name != "Authorization" else sources[0]
            raise ConfigError(
                f"{where}: the {name} value has a line break, control or non-ASCII "
                "character (value not shown)"
            )
    return headers


def _basic(user: str, password: str) -> str:
    pair = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _extra_headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigError(
            'COMFYUI_HEADERS must be a JSON object such as {"X-Api-Key": "..."}; '
            "it is not valid JSON"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError('COMFYUI_HEADERS must be a JSON object such as {"X-Api-Key": "..."}')
    headers: dict[str, str] = {}
    for name, value in data.items():
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"COMFYUI_HEADERS: {name[:60]!r} is not a valid header name")
        if not isinstance(value, str):
            raise ConfigError(f"COMFYUI_HEADERS: the value of {name} must be a string")
        if name.lower() in (h.lower() for h in headers):
            raise ConfigError(f"COMFYUI_HEADERS names {name} twice")
        headers[name] = value
    return headers
