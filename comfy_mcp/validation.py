"""Checking parameters and graphs against the live ``/object_info`` before queueing.

Everything here is pure: it takes the node definitions as a dict and returns values or
raises. Rules, applied the same way everywhere:

* unknown node classes are refused, all named at once (``MissingNodes``);
* a value not in a list (checkpoint, sampler, ...) is refused with the valid options
  and the closest match;
* a number out of range is refused with the range; a width/height off its step of 8 is
  rounded to the nearest multiple and a note says so;
* an omitted seed, or ``-1``, becomes a random seed within the node's range (at most
  2^53 - 1 so that every JSON client keeps it exact), and is always reported.
"""

from __future__ import annotations

import difflib
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_mcp.errors import GraphInvalid, InvalidParameter, MissingNodes, NodeProblem
from comfy_mcp.workflows import Parameter, Template

ObjectInfo = Mapping[str, Mapping[str, Any]]

_JSON_SAFE_MAX = 2**53 - 1
_SEED_MAX = 2**64 - 1


@dataclass
class Resolved:
    """Parameter values ready to write into a template, and what we changed on the way."""

    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def input_spec(info: Mapping[str, Any], input_name: str) -> list[Any] | None:
    """The ``[type, options]`` spec of one input of a node class, if it declares it."""
    inputs = info.get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(input_name)
        if isinstance(spec, list) and spec:
            return spec
    return None


def combo_options(spec: list[Any] | None) -> list[Any] | None:
    """The allowed values of a combo input, in either of ComfyUI's two spellings."""
    if not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _options(spec: list[Any] | None) -> dict[str, Any]:
    if spec and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def closest(value: Any, options: list[Any]) -> str | None:
    """The option a typo most likely meant, matching on base names for model paths."""
    text = str(value)
    names = [str(o) for o in options]
    for name in names:  # 'model.safetensors' vs 'SDXL\\model.safetensors'
        if name.replace("\\", "/").rsplit("/", 1)[-1] == text.replace("\\", "/").rsplit("/")[-1]:
            return name
    match = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    return match[0] if match else None


def not_in_list(value: Any, options: list[Any], what: str) -> str:
    if not options:
        return f"{value!r} is not available: this ComfyUI has no {what} installed"
    shown = ", ".join(map(str, options[:25])) + (" …" if len(options) > 25 else "")
    guess = closest(value, options)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return f"{value!r} is not available.{hint} Available: {shown}"


# -- template parameters ---------------------------------------------------------------------


def resolve(template: Template, given: Mapping[str, Any], object_info: ObjectInfo) -> Resolved:
    """Check each given parameter and fill defaults, using the server's node definitions."""
    unknown = sorted(set(given) - set(template.parameters))
    if unknown:
        known = ", ".join(template.parameters) or "nothing (set node inputs by '<id>.<input>')"
        hint = ""
        if unknown[0] in ("image", "denoise", "mask") and template.name.startswith("txt2img"):
            hint = " To start from an image, use template 'img2img'."
        raise InvalidParameter(unknown[0], f"template {template.name!r} has no such "
                               f"parameter; it takes: {known}.{hint}")
    resolved = Resolved()
    for name, param in template.parameters.items():
        specs = _bound_specs(template, param, object_info)
        value = _resolve_one(param, given.get(name), specs, template, resolved.notes)
        if value is not None:
            resolved.values[name] = value
    return resolved


def _bound_specs(template: Template, param: Parameter, object_info: ObjectInfo) -> list[list]:
    specs = []
    for binding in param.bindings:
        class_type = template.graph[binding.node_id]["class_type"]
        spec = input_spec(object_info.get(class_type) or {}, binding.input_name)
        if spec is not None:
            specs.append(spec)
    return specs


def _resolve_one(
    param: Parameter, value: Any, specs: list[list], template: Template, notes: list[str]
) -> Any:
    if value is None and param.required:
        raise InvalidParameter(param.name, f"template {template.name!r} needs it"
                               + (": " + param.description if param.description else ""))
    if param.type == "image":
        return _image_name(param, value)
    if param.type == "seed":
        return _seed(param, value, specs)
    if param.type in ("choice", "model"):
        return _choice(param, value, specs, template)
    if value is None:
        return param.default
    if param.type == "string":
        if not isinstance(value, str):
            raise InvalidParameter(param.name, f"expected text, got {value!r}")
        return value
    if param.type == "int":
        return _int(param, value, specs, notes)
    return _float(param, value, specs)


def _image_name(param: Parameter, value: Any) -> str | None:
    """A file in ComfyUI's input folder; names that climb out of it are refused here,
    because ComfyUI before 0.28 would load them."""
    if value is None:
        return param.default
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter(param.name, "expected the name of an uploaded image")
    path = value.rsplit(" [", 1)[0] if value.endswith("]") else value
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or ":" in path or ".." in parts or "\0" in value:
        raise InvalidParameter(param.name, f"{value!r} is not a file name in ComfyUI's input "
                               "folder; upload the image with upload_image and pass the name "
                               "it returns")
    return value


def _limits(param: Parameter, specs: list[list]) -> tuple[float, float]:
    low = -math.inf if param.minimum is None else param.minimum
    high = math.inf if param.maximum is None else param.maximum
    for spec in specs:
        opts = _options(spec)
        if isinstance(opts.get("min"), (int, float)):
            low = max(low, opts["min"])
        if isinstance(opts.get("max"), (int, float)):
            high = min(high, opts["max"])
    return low, high


def _check_range(param: Parameter, value: float, specs: list[list]) -> None:
    low, high = _limits(param, specs)
    if not low <= value <= high:
        raise InvalidParameter(param.name, f"{value} is out of range; use {_fmt(low)} to "
                               f"{_fmt(high)}")


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _as_int(param: Parameter, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(param.name, f"expected a whole number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidParameter(param.name, f"expected a whole number, got {value!r}")
    return int(value)


def _int(param: Parameter, value: Any, specs: list[list], notes: list[str]) -> int:
    number = _as_int(param, value)
    _check_range(param, number, specs)
    step = param.step or 1
    if number % step:
        rounded = max(step, round(number / step) * step)
        notes.append(f"{param.name} {number} is not a multiple of {step}; used {rounded}")
        number = rounded
        _check_range(param, number, specs)
    return number


def _float(param: Parameter, value: Any, specs: list[list]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(param.name, f"expected a number, got {value!r}")
    _check_range(param, float(value), specs)
    return float(value)


def _seed(param: Parameter, value: Any, specs: list[list]) -> int:
    low, high = _limits(param, specs)
    low = max(0, int(low) if math.isfinite(low) else 0)
    high = min(_SEED_MAX, int(high) if math.isfinite(high) else _SEED_MAX)
    if value is None and isinstance(param.default, int) and low <= param.default <= high:
        return param.default  # a workflow's own seed is kept unless asked otherwise
    if value is None or value == -1:
        top = min(high, _JSON_SAFE_MAX)
        return low + secrets.randbelow(top - low + 1)
    seed = _as_int(param, value)
    if not low <= seed <= high:
        raise InvalidParameter(param.name, f"{seed} is out of range; use {low} to {high}, "
                               "or leave it out (or -1) for a random seed")
    return seed


def _choice(param: Parameter, value: Any, specs: list[list], template: Template) -> Any:
    options = next((o for o in map(combo_options, specs) if o is not None), None)
    if options is None:  # the server does not tell; pass through what we have
        return value if value is not None else param.default
    what = f"{param.folder or param.name}"
    if value is None:
        bound = template.bound_value(param.name)
        for candidate in (param.default, bound):
            if candidate in options:
                return candidate
        if not options:
            raise InvalidParameter(param.name, _no_models(what))
        if isinstance(bound, str) and bound:  # the workflow names one: never swap silently
            raise InvalidParameter(param.name, f"the workflow uses {bound!r}, which this "
                                   "ComfyUI does not have. " + _pick_one(bound, options, what))
        return options[0]
    if value not in options:
        raise InvalidParameter(param.name, not_in_list(value, options, what))
    return value


def _pick_one(value: Any, options: list[Any], what: str) -> str:
    guess = closest(value, options)
    shown = ", ".join(map(str, options[:25])) + (" …" if len(options) > 25 else "")
    hint = f"Did you mean {guess!r}? " if guess else ""
    return f"{hint}Pass one of the available {what}: {shown}"


def _no_models(what: str) -> str:
    return (f"this ComfyUI has no {what} installed. Put a model file in ComfyUI's "
            f"models/{what} folder (or the folder extra_model_paths.yaml points to), "
            "then try again")


# -- whole graphs ------------------------------------------------------------------------


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def check_graph(graph: Mapping[str, Any], object_info: ObjectInfo) -> None:
    """Refuse a graph this ComfyUI would reject, naming every node and input at fault."""
    missing = {n["class_type"] for n in graph.values() if n["class_type"] not in object_info}
    if missing:
        raise MissingNodes(missing)
    problems: list[NodeProblem] = []
    for node_id, node in graph.items():
        problems += _node_problems(str(node_id), node, object_info[node["class_type"]], graph)
    if not any(object_info[n["class_type"]].get("output_node") for n in graph.values()):
        problems.append(NodeProblem("-", "-", "the workflow has no output node; add a "
                                    "SaveImage or PreviewImage node"))
    if problems:
        raise GraphInvalid(problems)


def _node_problems(
    node_id: str, node: Mapping[str, Any], info: Mapping[str, Any], graph: Mapping[str, Any]
) -> list[NodeProblem]:
    title = (node.get("_meta") or {}).get("title")
    inputs = node.get("inputs") or {}
    problems = []

    def problem(name: str, message: str) -> None:
        problems.append(NodeProblem(node_id, node["class_type"], message, input_name=name,
                                    title=title))

    for name in (info.get("input") or {}).get("required") or {}:
        if name not in inputs:
            problem(name, "a required input is missing")
    for name, value in inputs.items():
        if _is_link(value):
            if value[0] not in graph:
                problem(name, f"is linked to node {value[0]}, which is not in the workflow")
            continue
        message = _value_problem(value, input_spec(info, name))
        if message:
            problem(name, message)
    return problems


def _value_problem(value: Any, spec: list[Any] | None) -> str | None:
    if spec is None:
        return None
    opts = _options(spec)
    options = combo_options(spec)
    if options is not None and not opts.get("image_upload") and not opts.get("multiselect"):
        return None if value in options else not_in_list(value, options, "such values")
    if spec[0] in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a finite number"
        if spec[0] == "INT" and isinstance(value, float) and not value.is_integer():
            return f"{value} is not a whole number"
        low, high = opts.get("min"), opts.get("max")
        if isinstance(low, (int, float)) and value < low:
            return f"{value} is below the minimum {low}"
        if isinstance(high, (int, float)) and value > high:
            return f"{value} is above the maximum {high}"
    return None


def check_override_inputs(
    graph: Mapping[str, Any], overrides: Mapping[str, Any], object_info: ObjectInfo
) -> None:
    """Refuse ``"<node>.<input>"`` overrides naming an input the node class does not have:
    ComfyUI would ignore it without a word, and the caller would think it took effect."""
    for key in overrides:
        node_id, _, input_name = str(key).partition(".")
        info = object_info.get(graph[node_id]["class_type"])
        if not info:
            continue
        sections = info.get("input") or {}
        names = [n for part in ("required", "optional", "hidden")
                 for n in (sections.get(part) or {})]
        if input_name not in names:
            guess = difflib.get_close_matches(input_name, names, n=1)
            hint = f" Did you mean {node_id}.{guess[0]}?" if guess else ""
            raise InvalidParameter(key, f"node {node_id} ({graph[node_id]['class_type']}) has "
                                   f"no input {input_name!r}.{hint} Its inputs: "
                                   + ", ".join(names))
