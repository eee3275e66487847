"""Finding a graph's parameters from the graph itself, for workflows that declare none.

* ``prompt`` / ``negative_prompt``: follow each sampler's ``positive`` / ``negative``
  link back to the node that holds the text (through conditioning nodes), never by
  guessing from which text node "looks" positive;
* ``seed``: every integer input named ``seed`` or ``noise_seed``, on any node;
* ``width`` / ``height`` / ``batch_size``: the latent or image source (a node with literal
  width and height and no image or latent input);
* ``steps``, ``cfg``, ``sampler``, ``scheduler``, ``denoise``: on the samplers;
* ``checkpoint``: ``ckpt_name`` inputs; ``image``: ``LoadImage``'s file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfy_mcp.workflows import Binding, Parameter

_TEXT_INPUTS = ("text", "text_g", "text_l", "prompt")
_SAMPLER_INPUTS = {"steps": ("int", "steps"), "cfg": ("float", "cfg"),
                   "sampler": ("choice", "sampler_name"), "scheduler": ("choice", "scheduler"),
                   "denoise": ("float", "denoise")}
_SEED_INPUTS = ("seed", "noise_seed")
_MAX_DEPTH = 6


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def infer_parameters(graph: Mapping[str, Any]) -> dict[str, Parameter]:
    """Parameters found in the graph, each bound to every input that plays its role."""
    found: dict[str, tuple[str, list[Binding], dict[str, Any]]] = {}

    def add(name: str, kind: str, binding: Binding, **extra: Any) -> None:
        entry = found.setdefault(name, (kind, [], extra))
        if binding not in entry[1]:
            entry[1].append(binding)

    samplers = [nid for nid, n in graph.items()
                if _is_link(n["inputs"].get("positive")) and _is_link(n["inputs"].get("negative"))]
    for sampler in samplers:
        inputs = graph[sampler]["inputs"]
        for name, role in (("prompt", "positive"), ("negative_prompt", "negative")):
            for binding in _text_sources(graph, inputs[role][0]):
                add(name, "string", binding)
        for name, (kind, input_name) in _SAMPLER_INPUTS.items():
            if input_name in inputs and not _is_link(inputs[input_name]):
                add(name, kind, Binding(sampler, input_name))
    for node_id, node in graph.items():
        _node_roles(node_id, node, add)
    return {name: Parameter(name, kind, tuple(bindings), default=_value(graph, bindings[0]),
                            **extra)
            for name, (kind, bindings, extra) in found.items()}


def _value(graph: Mapping[str, Any], binding: Binding) -> Any:
    """What the graph itself holds: the parameter's default, so nothing changes unasked."""
    return graph[binding.node_id]["inputs"].get(binding.input_name)


def _node_roles(node_id: str, node: Mapping[str, Any], add: Any) -> None:
    inputs = node["inputs"]
    for input_name in _SEED_INPUTS:
        if isinstance(inputs.get(input_name), int):
            add("seed", "seed", Binding(node_id, input_name))
    if isinstance(inputs.get("ckpt_name"), str):
        add("checkpoint", "model", Binding(node_id, "ckpt_name"), folder="checkpoints")
    if node["class_type"] == "LoadImage" and isinstance(inputs.get("image"), str):
        add("image", "image", Binding(node_id, "image"))
    is_source = not any(_is_link(v) for v in inputs.values())
    if is_source and isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"),
                                                                         int):
        add("width", "int", Binding(node_id, "width"), step=8)
        add("height", "int", Binding(node_id, "height"), step=8)
        if isinstance(inputs.get("batch_size"), int):
            add("batch_size", "int", Binding(node_id, "batch_size"))


def _text_sources(graph: Mapping[str, Any], start: str) -> list[Binding]:
    """The literal text inputs that feed a conditioning link, breadth first."""
    found: list[Binding] = []
    frontier, seen = [start], set()
    for _ in range(_MAX_DEPTH):
        next_frontier = []
        for node_id in frontier:
            node = graph.get(node_id)
            if node is None or node_id in seen:
                continue
            seen.add(node_id)
            inputs = node["inputs"]
            texts = [n for n in _TEXT_INPUTS if isinstance(inputs.get(n), str)]
            found += [Binding(node_id, n) for n in texts]
            if texts:
                continue
            next_frontier += [v[0] for n, v in inputs.items()
                              if _is_link(v) and n not in ("clip", "model", "vae")]
            next_frontier += [v[0] for n in _TEXT_INPUTS if _is_link(v := inputs.get(n))]
        frontier = next_frontier
        if not frontier:
            break
    return found
