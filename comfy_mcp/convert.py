"""Converting a UI-format workflow (what ComfyUI's "Save" writes) to the API format.

The UI format lists nodes with positional ``widgets_values`` and links as
``[id, from_node, from_slot, to_node, to_slot, type]``; the API format names every input.
Widget order comes from the server's ``/object_info`` (``input_order``, else the
declaration order of required then optional inputs). What cannot be converted faithfully
is refused with the exact reason: bypassed nodes, subgraphs, and nodes the server does
not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_mcp.errors import MissingNodes, WorkflowError

_FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_MUTED, _BYPASSED = 2, 4
_CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The API-format graph of a UI workflow, using the server's node definitions."""
    try:
        return _convert(ui, object_info)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, WorkflowError):
            raise
        raise WorkflowError(f"the UI workflow is malformed ({type(exc).__name__}: {exc}); "
                            "open it in ComfyUI and save it again, or use 'Export (API)'") \
            from exc


def _convert(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    if (ui.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("this workflow uses subgraphs, which comfy-mcp cannot convert; "
                            "export it with 'Export (API)' in ComfyUI instead")
    nodes = {str(n["id"]): n for n in ui["nodes"] if isinstance(n, dict) and "id" in n}
    links = _links(ui.get("links") or [])
    missing = {n["type"] for n in nodes.values()
               if n.get("type") not in object_info and n.get("type") not in _FRONTEND_ONLY}
    if missing:
        raise MissingNodes(missing)
    graph: dict[str, Any] = {}
    for node_id, node in nodes.items():
        if node.get("type") in _FRONTEND_ONLY or node.get("mode") == _MUTED:
            continue
        if node.get("mode") == _BYPASSED:
            raise WorkflowError(f"node {node_id} ({node['type']}) is bypassed; remove or "
                                "enable it in ComfyUI, then save again")
        graph[node_id] = _api_node(node, object_info[node["type"]], nodes, links)
    return graph


def _links(raw: list[Any]) -> dict[int, tuple[str, int]]:
    """Link id -> (source node id, source slot)."""
    links = {}
    for link in raw:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (str(link[1]), int(link[2]))
        elif isinstance(link, dict) and "id" in link:
            links[link["id"]] = (str(link["origin_id"]), int(link["origin_slot"]))
    return links


def _api_node(
    node: Mapping[str, Any],
    info: Mapping[str, Any],
    nodes: Mapping[str, Any],
    links: Mapping[int, tuple[str, int]],
) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    linked = set()
    for slot in node.get("inputs") or []:
        link = slot.get("link")
        if link is None:
            continue
        linked.add(slot["name"])
        source = _follow(links[link], nodes, links)
        if source is not None:
            inputs[slot["name"]] = source
    values = list(node.get("widgets_values") or [])
    if isinstance(node.get("widgets_values"), dict):  # some nodes save a name -> value map
        inputs.update({k: v for k, v in node["widgets_values"].items() if k not in linked})
        values = []
    for name, spec in _widget_inputs(info):
        if not values:
            break
        value = values.pop(0)
        if _has_control_value(name, spec) and values and values[0] in _CONTROL_VALUES:
            values.pop(0)  # "fixed" / "randomize": a frontend setting, not an input
        if name not in linked:
            inputs[name] = value
    result = {"class_type": node["type"], "inputs": inputs}
    if node.get("title"):
        result["_meta"] = {"title": node["title"]}
    return result


def _follow(
    source: tuple[str, int], nodes: Mapping[str, Any], links: Mapping[int, tuple[str, int]]
) -> Any:
    """Resolve reroutes and primitive nodes to a real source link or a literal value."""
    node_id, slot = source
    for _ in range(64):
        node = nodes.get(node_id) or {}
        kind = node.get("type")
        if kind == "Reroute":
            link = (node.get("inputs") or [{}])[0].get("link")
            if link is None:
                return None
            node_id, slot = links[link]
        elif kind == "PrimitiveNode":
            values = node.get("widgets_values") or [None]
            return values[0]
        else:
            return [node_id, slot]
    raise WorkflowError("a chain of reroute nodes loops back on itself")


def _widget_inputs(info: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    sections = info.get("input") or {}
    order = info.get("input_order") or {}
    widgets = []
    for section in ("required", "optional"):
        specs = sections.get(section) or {}
        for name in order.get(section) or list(specs):
            spec = specs.get(name)
            if isinstance(spec, list) and spec and _is_widget(spec):
                widgets.append((name, spec))
    return widgets


def _is_widget(spec: list[Any]) -> bool:
    kind = spec[0]
    if isinstance(kind, list):
        return True
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind in _WIDGET_TYPES and not options.get("forceInput")


def _has_control_value(name: str, spec: list[Any]) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return True
    return spec[0] == "INT" and name in ("seed", "noise_seed")
