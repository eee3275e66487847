"""``python -m comfy_mcp`` with timestamps: runs the real server, logging to stderr the moment
each step after a job's completion starts and ends (``TRACE <time.time()> <what> [<prompt id>]``).

Used by ``overhead.py`` for the timeline of a call as the server lives it. It only wraps
functions from the outside; a name that no longer exists is skipped with a note, so the
benchmark keeps working while comfy_mcp changes.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any


def log(what: str) -> None:
    sys.stderr.write(f"TRACE {time.time():.6f} {what}\n")
    sys.stderr.flush()


def _job_of(args: tuple[Any, ...]) -> str:
    """The prompt id a call is about, when one of its arguments names it."""
    for arg in args:
        prompt_id = getattr(arg, "prompt_id", None)
        if isinstance(prompt_id, str):
            return prompt_id
        if isinstance(arg, str) and len(arg) == 36 and arg.count("-") == 4:
            return arg
    return ""


def _wrapped(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    if _is_async(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            job = _job_of(args)
            log(f"{name} start {job}")
            result = await fn(*args, **kwargs)
            log(f"{name} end {job}")
            return result

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        job = _job_of(args)
        log(f"{name} start {job}")
        result = fn(*args, **kwargs)
        log(f"{name} end {job}")
        return result

    return run


def _is_async(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def wrap(owner: Any, attribute: str) -> None:
    fn = getattr(owner, attribute, None)
    if fn is None:
        log(f"note: {getattr(owner, '__name__', owner)}.{attribute} not found; not traced")
        return
    setattr(owner, attribute, _wrapped(fn, attribute))


def trace_events() -> None:
    """Log the arrival of the events that end a job."""
    from comfy_mcp import events

    dispatch = events.EventStream._dispatch_text

    def traced(self: Any, message: str) -> None:
        if '"execution_success"' in message or '"executing"' in message:
            event = json.loads(message)
            data = event.get("data") or {}
            node = data.get("node", "")
            log(f"ws {event.get('type')} {node} {data.get('prompt_id', '')}")
        dispatch(self, message)

    events.EventStream._dispatch_text = traced


def install() -> None:
    from comfy_mcp import client, outputs, server, service

    trace_events()
    wrap(client.ComfyClient, "history")
    wrap(client.ComfyClient, "view")
    wrap(outputs, "save_output")
    wrap(service, "_previews")
    wrap(server, "generation_content")


if __name__ == "__main__":
    install()
    from comfy_mcp.cli import main

    main()
