"""Plain-text renderings of ComfyUI data for an assistant (and a person) to read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from comfy_mcp.jobs import queue_items
from comfy_mcp.service import Generation
from comfy_mcp.validation import combo_options, input_spec
from comfy_mcp.workflows import Template

# The prompts are the caller's own words and the seed has its own line.
_UNSHOWN = ("prompt", "negative_prompt", "seed")


def generation_text(gen: Generation) -> str:
    """What a finished generation made and where it is, first line most important."""
    count = len(gen.files)
    timing = []
    if gen.elapsed_seconds:
        timing.append(f"in {gen.elapsed_seconds:.1f} s")
    if gen.execution_seconds is not None:
        timing.append(f"(ComfyUI ran {gen.execution_seconds:.2f} s)")
    lines = [" ".join([f"Done: {count} file{'s' if count != 1 else ''}", *timing])]
    if gen.generation_id is not None:
        lines.append(f"generation: #{gen.generation_id}")
    lines.append(f"prompt_id: {gen.prompt_id}")
    if "seed" in gen.values:
        lines.append(f"seed: {gen.values['seed']}")
    shown = [f"{k}={_clip(str(v), 60)}" for k, v in gen.values.items() if k not in _UNSHOWN]
    if gen.template:
        shown.insert(0, f"template={gen.template}")
    if shown:
        lines.append("parameters: " + ", ".join(shown))
    if gen.cached:
        lines.append("note: every node came from ComfyUI's cache (same inputs as an earlier "
                     "run); change the seed for a new image")
        if not gen.files:
            lines.append("note: this ComfyUI did not report the cached files again; they are "
                         "the files of that earlier run")
    lines += [f"note: {note}" for note in gen.notes]
    lines += _file_lines(gen)
    lines += [f"text output: {_clip(text, _MAX_TEXT)}" for text in gen.texts[:10]]
    if gen.previews and len(gen.files) > 1:
        lines.append(_preview_line(gen))
    return "\n".join(lines)


_MAX_FILE_LINES = 40
_MAX_TEXT = 2000


def _file_lines(gen: Generation) -> list[str]:
    lines = ["saved:"] if gen.files else []
    for number, item in enumerate(gen.files[:_MAX_FILE_LINES], 1):
        out = item.output
        size = f" ({item.width}x{item.height})" if item.width else ""
        kind = "" if out.media == "image" else f" [{out.media}]"
        temp = " [temporary preview]" if out.temporary else ""
        where = str(item.path) if item.path else f"NOT SAVED: {item.error}"
        lines.append(f"  {number}. {where}{size}{kind}{temp}")
    if len(gen.files) > _MAX_FILE_LINES:
        folder = next((f.path.parent for f in gen.files if f.path), None)
        lines.append(f"  ... and {len(gen.files) - _MAX_FILE_LINES} more"
                     + (f", also in {folder}" if folder else ""))
    return lines


def _preview_line(gen: Generation) -> str:
    first = gen.previews[0]
    stills = sum(1 for f in gen.files if f.output.media == "image" and f.path)
    extra = len(gen.previews) - 1
    text = f"previews: a numbered contact sheet of {stills} images ({first.width}x{first.height})"
    if extra:
        text += f", then {extra} single previews (1..{extra})"
    return text


def queue_text(queue: Mapping[str, Any], own: Iterable[str] = (), limit: int = 30) -> str:
    """Running and pending jobs, in execution order (the first ``limit`` waiting ones)."""
    own = set(own)
    running = [i for i in queue_items(queue, "queue_running") if _item(i)]
    pending = [i for i in queue_items(queue, "queue_pending") if _item(i)]
    if not running and not pending:
        return "ComfyUI's queue is empty: nothing running, nothing waiting."
    lines = [f"{len(running)} running, {len(pending)} waiting."]
    for item in running:
        lines.append(f"running: {_job(item, own)}")
    for position, item in enumerate(pending[:limit], 1):
        lines.append(f"waiting #{position}: {_job(item, own)}")
    if len(pending) > limit:
        lines.append(f"... and {len(pending) - limit} more waiting")
    return "\n".join(lines)


def _item(item: Any) -> bool:
    return isinstance(item, list) and len(item) >= 3


def _job(item: list[Any], own: set[str]) -> str:
    graph = item[2] if isinstance(item[2], dict) else {}
    nodes = [n for n in graph.values() if isinstance(n, dict)]
    inputs = [n["inputs"] for n in nodes if isinstance(n.get("inputs"), dict)]
    classes = [n.get("class_type") for n in nodes]
    texts = [i["text"] for i in inputs if isinstance(i.get("text"), str)]
    summary = f"{len(classes)} nodes"
    if texts and texts[0]:
        summary += f', prompt "{_clip(texts[0], 60)}"'
    mine = " (queued by comfy-mcp)" if item[1] in own else ""
    return f"{item[1]}{mine}: {summary}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, (int, float)) else "?"


def system_text(stats: Mapping[str, Any]) -> str:
    """Devices, memory and versions from /system_stats."""
    system = stats.get("system") or {}
    lines = []
    for device in stats.get("devices") or []:
        lines.append(f"device {device.get('name', '?')} ({device.get('type', '?')}): "
                     f"VRAM {_gib(device.get('vram_free'))} free of "
                     f"{_gib(device.get('vram_total'))}")
    if not lines:
        lines.append("no devices reported")
    lines.append(f"RAM: {_gib(system.get('ram_free'))} free of {_gib(system.get('ram_total'))}")
    versions = [("ComfyUI", "comfyui_version"), ("Python", "python_version"),
                ("PyTorch", "pytorch_version"), ("OS", "os")]
    found = [f"{label} {str(system[key]).split()[0]}" for label, key in versions
             if system.get(key)]
    if found:
        lines.append("versions: " + ", ".join(found))
    return "\n".join(lines)


def node_list_text(info: Mapping[str, Any], search: str, category: str, limit: int) -> str:
    """Node classes matching a search term and/or category, one line each."""
    needle, cat = search.lower(), category.lower()
    rows = []
    for name, node in sorted(info.items()):
        display = str(node.get("display_name") or name)
        node_cat = str(node.get("category") or "")
        haystack = f"{name} {display} {node_cat} {node.get('description') or ''}".lower()
        if needle and needle not in haystack or cat and not node_cat.lower().startswith(cat):
            continue
        rows.append(f"{name} — {display} [{node_cat}]")
    if not rows:
        return "No node class matches; try a shorter search term or no category."
    head = f"{len(rows)} node classes match"
    if len(rows) > limit:
        head += f"; showing the first {limit} (narrow the search to see others)"
    return "\n".join([head + ":"] + rows[:limit])


def node_detail_text(name: str, node: Mapping[str, Any]) -> str:
    """One node class: its inputs with types, defaults and ranges, and its outputs."""
    lines = [f"{name} — {node.get('display_name') or name} [{node.get('category', '')}]"]
    if node.get("description"):
        lines.append(str(node["description"]))
    inputs = node.get("input") or {}
    for section in ("required", "optional"):
        for input_name in inputs.get(section) or {}:
            spec = input_spec(node, input_name) or []
            lines.append(f"  {input_name} ({section}): {_spec_text(spec)}")
    outputs = node.get("output") or []
    names = node.get("output_name") or outputs
    if outputs:
        pairs = zip(names, outputs, strict=False)
        lines.append("outputs: " + ", ".join(f"{n} ({t})" for n, t in pairs))
    if node.get("output_node"):
        lines.append("this is an output node")
    return "\n".join(lines)


def _spec_text(spec: list[Any]) -> str:
    options = combo_options(spec)
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options is not None:
        shown = ", ".join(map(str, options[:15])) + (" …" if len(options) > 15 else "")
        return f"one of [{shown}]" if options else "one of [] (none available)"
    text = str(spec[0]) if spec else "?"
    extras = [f"{k} {opts[k]}" for k in ("default", "min", "max", "step") if k in opts]
    return text + (f" ({', '.join(extras)})" if extras else "")


def template_text(template: Template) -> str:
    """One template: its description and each parameter with type, default and range."""
    params = []
    for param in template.parameters.values():
        detail = [param.type]
        if param.minimum is not None and param.maximum is not None:
            detail.append(f"{param.minimum:g}..{param.maximum:g}")
        if param.required:
            detail.append("required")
        elif param.default not in (None, ""):
            detail.append(f"default {param.default}")
        params.append(f"{param.name} ({', '.join(detail)})")
    return f"{template.name}: {template.description}\n  " + ", ".join(params)
