"""MCP resources: templates, model lists and saved outputs, readable without a tool call.

* ``comfy://templates`` and ``comfy://templates/{name}``: the workflow templates;
* ``comfy://models/{folder}``: model files in one ComfyUI model folder;
* ``comfy://outputs/{+path}``: a file comfy-mcp saved, by its path under the output
  folder (the full-resolution original that a tool result links to).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from comfy_mcp.errors import ComfyError, WorkflowError
from comfy_mcp.service import ComfyService
from comfy_mcp.workflows import Template, TemplateLibrary

OUTPUTS = "comfy://outputs/"


def output_uri(output_dir: Path, path: Path) -> str | None:
    """The resource URI of a saved file, or None if it is not under the output folder."""
    try:
        relative = path.resolve().relative_to(output_dir.resolve())
    except ValueError:
        return None
    return OUTPUTS + quote(relative.as_posix())


def template_json(template: Template) -> dict[str, Any]:
    params = {}
    for name, param in template.parameters.items():
        entry = {k: v for k, v in asdict(param).items()
                 if v not in (None, "", False) and k not in ("name", "bindings")}
        entry["bind"] = [str(b) for b in param.bindings]
        params[name] = entry
    return {"name": template.name, "description": template.description,
            "parameters": params, "graph": template.graph}


def register_resources(
    server: MCPServer, library: TemplateLibrary, service: Callable[[], ComfyService]
) -> None:
    """Add the resources to ``server``; ``service`` returns the running ComfyService."""

    @server.resource("comfy://templates", mime_type="application/json",
                     description="Workflow templates for generate_art, with parameters")
    def templates() -> list[dict[str, Any]]:
        return [{"name": t.name, "description": t.description,
                 "parameters": list(t.parameters)} for t in library.all()]

    @server.resource("comfy://templates/{name}", mime_type="application/json",
                     description="One workflow template: parameters and graph")
    def template(name: str) -> dict[str, Any]:
        try:
            return template_json(library.get(name))
        except WorkflowError as exc:
            raise ResourceNotFoundError(str(exc)) from exc

    @server.resource("comfy://models/{folder}", mime_type="application/json",
                     description="Model files in a ComfyUI model folder (checkpoints, loras…)")
    async def models(folder: str) -> list[str]:
        try:
            return await service().client.models(folder)
        except ComfyError as exc:
            raise ResourceError(str(exc)) from exc

    @server.resource(OUTPUTS + "{+path}", mime_type="application/octet-stream",
                     description="A full-resolution file comfy-mcp saved")
    def output(path: str) -> bytes:
        return read_output(service().settings.output_dir, path)


def read_output(output_dir: Path, relative: str) -> bytes:
    root = output_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise ResourceNotFoundError(f"no saved file {relative!r} in the output folder")
    return target.read_bytes()


def guess_mime(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"
