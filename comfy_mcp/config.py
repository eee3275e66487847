"""Settings, read from the environment once at start-up.

``Settings.from_env(environ)`` takes the mapping as an argument so tests never touch
``os.environ``. Every variable is optional.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from comfy_mcp.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8188"


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
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get("COMFYUI_URL") or env.get("COMFY_URL") or DEFAULT_URL
        workflows = env.get("COMFY_MCP_WORKFLOWS_DIR")
        return cls(
            comfyui_url=normalize_url(url),
            output_dir=_path(env.get("COMFY_MCP_OUTPUT_DIR")) or default_output_dir(env),
            http_timeout=_seconds(env, "COMFY_MCP_HTTP_TIMEOUT", 30.0),
            wait_limit=_seconds(env, "COMFY_MCP_WAIT_LIMIT", 600.0),
            poll_interval=_seconds(env, "COMFY_MCP_POLL_INTERVAL", 1.0),
            user_workflows_dir=_path(workflows),
            headers=_auth_headers(env),
        )


def normalize_url(url: str) -> str:
    """Check a ComfyUI base URL and drop a trailing slash; a path prefix is kept."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"COMFYUI_URL={url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8188"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"COMFYUI_URL={url!r} must not have a query or fragment")
    return url.rstrip("/")


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
    if value <= 0:
        raise ConfigError(f"{key}={raw!r} must be greater than 0")
    return value


def _auth_headers(env: Mapping[str, str]) -> dict[str, str]:
    """Headers for a ComfyUI behind an authenticating proxy."""
    headers: dict[str, str] = {}
    token = env.get("COMFYUI_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
