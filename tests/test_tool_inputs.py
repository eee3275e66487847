"""Property tests: any arguments to any tool give a result or a readable error.

The tools and their parameters come from the server's own ``tools/list``. Arguments are
drawn from each parameter's schema type plus junk of every other shape: wrong types,
huge and non-finite numbers, empty, very long and odd unicode strings, nested lists and
objects, unknown keys, missing required keys. Every call must end in a normal result
or an ``is_error`` result whose text says something beyond the SDK's bare
"Error executing tool X" (which means an unexpected exception escaped the tool), and
the server must answer the next call.

One fake ComfyUI and one in-memory MCP client serve the whole module; they run on an
event loop in a helper thread (a blocking portal) so hypothesis drives plain functions.
The fake's images are capped at 64x64 and two per job, so a valid request for 16384x16384
with a batch of 4096 stays cheap; the input handling is the same.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from fakecomfy import FakeComfy, _Picture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from comfy_mcp.config import Settings
from comfy_mcp.server import build_server

# The server runs on another thread while hypothesis draws arguments, and its jobs (and
# the fake's PreviewImage names) use the global random module; hypothesis then warns as
# if a strategy had. Ours use no random module.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies")

TOOL_NAMES = [tool.name for tool in anyio.run(build_server(Settings()).list_tools)]
EXAMPLES = int(os.environ.get("COMFY_MCP_TEST_EXAMPLES", "30"))

Call = Callable[[str, dict[str, Any]], Any]


@dataclass
class Harness:
    call: Call  # call(name, arguments) -> CallToolResult
    schemas: dict[str, Any]  # tool name -> input schema, from tools/list
    fake: FakeComfy
    outcomes: Counter[str] = field(default_factory=Counter)  # "tool ok" / "tool error"


class SmallFake(FakeComfy):
    """The fake ComfyUI with every output image capped at 64x64, two per job."""

    def _save(self, kind: str, picture: _Picture, prefix: str) -> list[dict[str, str]]:
        small = _Picture(min(picture.width, 64), min(picture.height, 64),
                         min(picture.batch, 2), picture.color)
        return super()._save(kind, small, prefix)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One comfy-mcp on one fake ComfyUI for the module, called from plain functions."""
    root = tmp_path_factory.mktemp("tool-inputs")
    (root / "allowed").mkdir()
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        fake = stack.enter_context(portal.wrap_async_context_manager(SmallFake.serve()))
        config = Settings(comfyui_url=fake.url, output_dir=root / "out", wait_limit=3,
                          poll_interval=0.2, http_timeout=5, upload_dirs=(root / "allowed",),
                          upload_max_bytes=2_000_000)
        client = stack.enter_context(portal.wrap_async_context_manager(
            Client(build_server(config))))
        listed = portal.call(client.list_tools).tools
        schemas = {tool.name: tool.input_schema for tool in listed}

        def call(name: str, arguments: dict[str, Any]) -> Any:
            return portal.call(partial(client.call_tool, name, arguments))

        yield Harness(call, schemas, fake)


# -- strategies ------------------------------------------------------------------------------

ODD_STRINGS = [
    "", " ", "\x00", "a\x00b", "\r\n", "\t", "../../etc/passwd", "/etc/passwd", "~",
    "~nosuchuser-xyz/a.png", "C:\\Windows\\win.ini", "\\\\server\\share", "NUL", "CON.png",
    "\ud800", "\udcff.png", "\u202egnp.exe", "\ufeff", "😀" * 20, "é" * 300, "%s%n%x",
    "{}", "[]", "null", "NaN", "-1", "1e309", "0x10", "txt2img", "checkpoints",
    "00000000-0000-4000-8000-000000000000", "KSampler", "data:image/png;base64,",
    "iVBORw0KGgo=", "a" * 256, "../" * 200, "<script>alert(1)</script>", "' OR 1=1 --",
]
HUGE_INTS = [0, -1, 1, 7, 8, 64, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**64),
             10**100, -(10**100)]
ODD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.5, 1e-9]

strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(ODD_STRINGS),
    st.builds(lambda char, count: char * count,
              st.sampled_from(["a", "é", "😀", "\x00", "/", "."]),
              st.integers(1_000, 200_000)),
)
integers = st.one_of(st.integers(), st.sampled_from(HUGE_INTS))
numbers = st.one_of(st.floats(), st.sampled_from(ODD_FLOATS), integers)
scalars = st.one_of(st.none(), st.booleans(), integers, numbers, strings)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _types(schema: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    if isinstance(schema.get("type"), str):
        found.add(schema["type"])
    elif isinstance(schema.get("type"), list):
        found.update(schema["type"])
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _types(option)
    return found


# Values a well-meaning assistant would send: in range, right type, real names.
PLAUSIBLE_STRINGS = ["a red fox in the snow", "txt2img", "img2img", "sd15-tiny.safetensors",
                     "euler", "karras", "checkpoints", "loras", "KSampler", "image",
                     "sampling", "ref.png", "blurry"]
plausible = {
    "string": st.one_of(st.sampled_from(PLAUSIBLE_STRINGS), st.text(min_size=1, max_size=20)),
    "integer": st.one_of(st.sampled_from([64, 72, 128, 512, 1, 2, 4, 20, -1, 0, 42]),
                         st.integers(-10, 2048)),
    "number": st.one_of(st.sampled_from([0.0, 0.5, 1.0, 0.01, 7.5]),
                        st.floats(-5, 100, allow_nan=False)),
    "boolean": st.booleans(), "null": st.none(),
}

_BY_TYPE = {
    "string": strings, "integer": integers, "number": numbers, "boolean": st.booleans(),
    "null": st.none(), "object": st.dictionaries(st.text(max_size=12), junk, max_size=4),
    "array": st.lists(junk, max_size=4),
}


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly values of the declared type (in and out of range), sometimes anything."""
    typed = [_BY_TYPE[kind] for kind in sorted(_types(schema)) if kind in _BY_TYPE]
    if "enum" in schema:
        typed.append(st.sampled_from(schema["enum"]))
    return st.one_of(*typed, junk) if typed else junk


BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.text(min_size=1, max_size=60),
    "negative_prompt": st.text(max_size=30),
    "width": st.sampled_from([64, 128, 512]), "height": st.sampled_from([64, 96, 512]),
    "steps": st.integers(1, 30), "cfg": st.floats(0, 30), "seed": st.integers(-1, 2**53),
    "sampler": st.sampled_from(["euler", "heun", "ddim"]),
    "scheduler": st.sampled_from(["normal", "karras"]),
    "checkpoint": st.sampled_from(["sd15-tiny.safetensors"]), "batch_size": st.integers(1, 3),
    "template": st.sampled_from(["txt2img"]), "wait_seconds": st.floats(0.5, 5),
    "folder": st.sampled_from(["checkpoints", "loras", "vae"]),
}


def plausible_for(name: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if name in BY_NAME:
        return BY_NAME[name]
    typed = [plausible[kind] for kind in sorted(_types(schema)) if kind in plausible]
    return st.one_of(*typed) if typed else value_for(schema)


def arguments_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Half the time well-typed, plausible arguments (required ones present), half junk."""
    properties = schema.get("properties", {})
    # "prompt" is optional in the schema (a workflow may not need one) but txt2img needs it.
    required = set(schema.get("required", [])) | ({"prompt"} & set(properties))
    optional = sorted(name for name in properties if name not in required)

    def sensible_with(chosen: list[str]) -> st.SearchStrategy[dict[str, Any]]:
        names = [name for name in properties if name in required or name in chosen]
        return st.fixed_dictionaries({n: plausible_for(n, properties[n]) for n in names})

    # Required parameters plus at most three others: a long list of plausible values
    # rarely holds together, and then nothing would reach ComfyUI.
    sensible = st.lists(st.sampled_from(optional), max_size=3, unique=True).flatmap(
        sensible_with) if optional else sensible_with([])
    known = st.fixed_dictionaries({}, optional={
        name: value_for(spec) for name, spec in properties.items()})
    unknown = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in properties),
                              junk, max_size=2)
    return st.one_of(sensible, known, st.builds(lambda a, b: {**b, **a}, known, unknown))


# -- the property ---------------------------------------------------------------------------


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def check_clean(name: str, arguments: dict[str, Any], result: Any) -> None:
    text = text_of(result)
    if not result.is_error:
        return
    assert not re.fullmatch(rf"\s*Error executing tool {name}\s*", text), (
        f"an unexpected exception escaped {name} for {arguments!r:.300}")
    assert "Traceback (most recent call last)" not in text, text[:500]
    assert "Internal server error" not in text, text[:500]
    assert text.strip(), "an error with no message"


def check_alive(call: Call) -> None:
    result = call("list_templates", {})
    assert not result.is_error and "txt2img" in text_of(result)


def test_every_tool_is_covered(server: Harness) -> None:
    assert sorted(server.schemas) == sorted(TOOL_NAMES)


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_any_arguments_give_a_clean_answer(
    server: Harness, name: str
) -> None:
    call, schemas = server.call, server.schemas

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(arguments=arguments_for(schemas[name]))
    def run(arguments: dict[str, Any]) -> None:
        result = call(name, arguments)
        check_clean(name, arguments, result)
        server.outcomes[f"{name} {'error' if result.is_error else 'ok'}"] += 1
        check_alive(call)

    run()


# -- cases found by the property tests, kept as plain tests ------------------------------------


@pytest.mark.parametrize("name, arguments", [
    ("upload_image", {"path": "~nosuchuser-xyz/a.png"}),
    ("upload_image", {"path": "x" * 5000}),
    ("upload_image", {"data": "\ud800"}),
    ("upload_image", {"data": "iVBORw0KGgo=", "filename": "\ud800.png"}),
    ("list_nodes", {"node": "\ud800"}),
    ("list_models", {"folder": "\x00"}),
    ("get_result", {"prompt_id": "../../etc/passwd"}),
    ("get_result", {"prompt_id": "\ud800"}),
    ("cancel", {"prompt_id": "x?y#z"}),
])
def test_found_cases(server: Harness, name: str,
                     arguments: dict[str, Any]) -> None:
    call = server.call
    check_clean(name, arguments, call(name, arguments))
    check_alive(call)


def test_inputs_reached_comfyui(server: Harness) -> None:
    """The properties were not all refused by the schema: jobs ran, files were uploaded."""
    check_alive(server.call)
    if EXAMPLES >= 30:
        assert server.outcomes["generate_art ok"] >= 3, server.outcomes
        assert server.outcomes["list_nodes ok"] >= 3, server.outcomes
    assert server.fake.history, "no generate_art call reached ComfyUI"


@pytest.mark.parametrize("name, arguments", [
    ("get_result", {"prompt_id": "\x1f"}),
    ("cancel", {"prompt_id": "\x1f"}),
    ("list_nodes", {"node": "\x1f"}),
    ("cancel", {"prompt_id": "a" * 100_000}),
], ids=["get_result-control", "cancel-control", "list_nodes-control", "cancel-too-long"])
def test_unencodable_url_path_is_a_clean_error(server: Harness, name: str,
                                               arguments: dict[str, Any]) -> None:
    """Found here: httpx.InvalidURL (a control character, a URL over 64 KiB) escaped
    client.py as the bare 'Error executing tool'; fixed by quoting path segments and
    translating InvalidURL."""
    check_clean(name, arguments, server.call(name, arguments))
    check_alive(server.call)


@pytest.mark.parametrize("workflow", ["a" * 1000, "~nosuchuser-xyz/flow.json"],
                         ids=["long-name", "tilde-user"])
def test_workflow_path_errors_are_readable(server: Harness, workflow: str) -> None:
    """Found here (OSError / RuntimeError escaped outputs.check_readable_file); fixed."""
    arguments = {"prompt": "x", "workflow": workflow}
    result = server.call("generate_art", arguments)
    check_clean("generate_art", arguments, result)
    assert result.is_error
