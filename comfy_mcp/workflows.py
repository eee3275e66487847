"""Workflow templates: an API-format graph plus named parameters bound to node inputs.

A template file (``workflows/<name>.json``)::

    {"description": "...",
     "parameters": {"prompt": {"type": "string", "bind": ["6.text"], "description": "..."},
                    "width": {"type": "int", "default": 512, "bind": ["5.width"]}, ...},
     "graph": {<API-format graph, as ComfyUI's "Export (API)" writes it>}}

A binding names one node input, in any of three ways: ``"<node id>.<input>"``,
``{"node": "<id>", "input": "<input>"}`` or ``{"title": "<node title>", "input": "..."}``
(the title a user gave the node in ComfyUI, unique in the graph). A template without
``parameters`` gets them from the graph itself (``comfy_mcp.inference``).

Types: ``string``, ``int``, ``float``, ``seed``, ``image`` (a file in ComfyUI's input
folder, as ``upload_image`` names it), ``choice`` (options from the live ``/object_info``)
and ``model`` (a file of a model folder; the default is the first one ComfyUI lists).
Filling a template never touches the network; checks against the server are in
``comfy_mcp.validation``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from comfy_mcp.errors import WorkflowError

logger = logging.getLogger(__name__)

PARAM_TYPES = ("string", "int", "float", "seed", "image", "choice", "model")
_MAX_TEMPLATE_BYTES = 10 * 2**20


@dataclass(frozen=True)
class Binding:
    node_id: str
    input_name: str

    def __str__(self) -> str:
        return f"{self.node_id}.{self.input_name}"


def parse_binding(spec: Any, graph: Mapping[str, Any], where: str) -> Binding:
    """One binding in any of its three spellings, checked against the graph."""
    if isinstance(spec, str):
        node_id, sep, input_name = spec.partition(".")
        if not sep or not node_id or not input_name:
            raise WorkflowError(f"{where}: binding {spec!r} must look like '<node id>.<input>'")
    elif isinstance(spec, dict) and isinstance(spec.get("input"), str):
        input_name = spec["input"]
        if "title" in spec:
            node_id = node_by_title(graph, str(spec["title"]), where)
        else:
            node_id = str(spec.get("node", ""))
    else:
        raise WorkflowError(f"{where}: binding {spec!r} needs 'input' and 'node' or 'title'")
    if node_id not in graph:
        raise WorkflowError(f"{where}: binding {spec!r} names node {node_id!r}, which is not "
                            "in the graph")
    return Binding(node_id, input_name)


def node_by_title(graph: Mapping[str, Any], title: str, where: str) -> str:
    found = [nid for nid, node in graph.items()
             if (node.get("_meta") or {}).get("title") == title]
    if len(found) != 1:
        many = "several nodes" if found else "no node"
        raise WorkflowError(f"{where}: {many} titled {title!r}; titles used for binding "
                            "must be unique")
    return found[0]


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    bindings: tuple[Binding, ...]
    description: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: int | None = None
    folder: str | None = None  # for type "model"
    required: bool = False


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    graph: Mapping[str, Any]
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    source: str = ""

    def fill(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the graph with each given parameter written into its inputs."""
        graph = copy.deepcopy(dict(self.graph))
        for name, value in values.items():
            if value is None:
                continue
            for binding in self.parameters[name].bindings:
                graph[binding.node_id]["inputs"][binding.input_name] = value
        return graph

    def bound_value(self, name: str) -> Any:
        """The value the graph itself holds for a parameter (its first binding)."""
        binding = self.parameters[name].bindings[0]
        return self.graph[binding.node_id]["inputs"].get(binding.input_name)


def load_template(path: Path | str, text: str | None = None) -> Template:
    """Parse one template file; every problem names the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8") if text is None else text)
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"cannot read template {path.name}: {exc}") from exc
    if isinstance(data, dict) and "graph" not in data and "parameters" not in data:
        data = {"graph": data}  # a bare API export dropped into the folder
    if not isinstance(data, dict) or not isinstance(data.get("graph"), dict):
        raise WorkflowError(f"template {path.name} needs a 'graph' object (API format)")
    graph = data["graph"]
    check_api_graph(graph, where=f"template {path.name}")
    if data.get("parameters"):
        params = {
            name: _parameter(name, spec, graph, path.name)
            for name, spec in data["parameters"].items()
        }
    else:
        from comfy_mcp.inference import infer_parameters  # it builds on this module

        params = infer_parameters(graph)
    return Template(path.stem, str(data.get("description", "")), graph, params, str(path))


def _parameter(name: str, spec: Any, graph: Mapping[str, Any], file: str) -> Parameter:
    where = f"{file}: parameter {name!r}"
    if not isinstance(spec, dict):
        raise WorkflowError(f"{where} must be an object")
    kind = spec.get("type", "string")
    if kind not in PARAM_TYPES:
        raise WorkflowError(f"{where} has unknown type {kind!r}; use one of "
                            + ", ".join(PARAM_TYPES))
    bindings = tuple(parse_binding(b, graph, where) for b in spec.get("bind") or [])
    if not bindings:
        raise WorkflowError(f"{where} is bound to no node input")
    return Parameter(
        name, kind, bindings, str(spec.get("description", "")), spec.get("default"),
        spec.get("min"), spec.get("max"), spec.get("step"), spec.get("folder"),
        bool(spec.get("required", False)),
    )


def check_api_graph(graph: Any, *, where: str = "the workflow") -> None:
    """Refuse anything that is not an API-format graph, saying what it looks like instead."""
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{where} must be a non-empty JSON object of nodes")
    if "nodes" in graph and "links" in graph:
        raise WorkflowError(
            f"{where} is in ComfyUI's UI format (it has 'nodes' and 'links'). Export it "
            "with 'Export (API)' in ComfyUI (enable dev mode options in older versions)."
        )
    if "prompt" in graph and isinstance(graph["prompt"], dict) and len(graph) <= 3:
        raise WorkflowError(f"{where} is wrapped in {{'prompt': ...}}; pass the graph itself")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{where}: node {node_id!r} has no 'class_type'")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{where}: node {node_id!r} has 'inputs' that is not an object")
        node.setdefault("inputs", {})
        if "_meta" in node and not isinstance(node["_meta"], dict):
            del node["_meta"]  # only ever a title holder; anything else is noise
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and not isinstance(value[0], str):
                raise WorkflowError(f"{where}: node {node_id!r} links to {value!r}; node ids "
                                    "in links must be strings, as in ['4', 0]")


class TemplateLibrary:
    """The built-in templates plus a user folder, re-read when a file changes."""

    def __init__(self, user_dir: Path | None = None) -> None:
        self.user_dir = user_dir
        self._cache: dict[Path, tuple[float, int, Template]] = {}

    def names(self) -> list[str]:
        return sorted(self._files())

    def get(self, name: str) -> Template:
        files = self._files()
        if name not in files:
            available = ", ".join(sorted(files)) or "none"
            guess = difflib.get_close_matches(name, files, n=1, cutoff=0.4)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            raise WorkflowError(f"no workflow template named {name!r}.{hint} Available: "
                                f"{available}")
        return self._load(files[name])

    def all(self) -> list[Template]:
        """Every template that loads; a broken user file is logged and skipped."""
        templates = []
        for name in self.names():
            try:
                templates.append(self.get(name))
            except WorkflowError as exc:
                logger.warning("skipping template %s: %s", name, exc)
        return templates

    def _files(self) -> dict[str, Path]:
        files = {p.stem: p for p in _builtin_dir().glob("*.json")}
        if self.user_dir is not None and self.user_dir.is_dir():
            # Regular files only: reading a FIFO named *.json would block forever.
            files.update({p.stem: p for p in sorted(self.user_dir.glob("*.json"))
                          if p.is_file() and p.stat().st_size <= _MAX_TEMPLATE_BYTES})
        return files

    def _load(self, path: Path) -> Template:
        stat = path.stat()
        cached = self._cache.get(path)
        if cached and cached[:2] == (stat.st_mtime, stat.st_size):
            return cached[2]
        template = load_template(path)
        self._cache[path] = (stat.st_mtime, stat.st_size, template)
        return template


def _builtin_dir() -> Path:
    """``workflows/`` of a source checkout, or the copy installed as package data."""
    checkout = Path(__file__).resolve().parent.parent / "workflows"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("comfy_mcp.workflows")))
