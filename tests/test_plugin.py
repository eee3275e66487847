"""The Claude Code plugin files: manifest, marketplace, MCP config, commands, launcher."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

import comfy_mcp
from comfy_mcp.server import TOOLS

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "comfy"
SERVER = "comfy"
TOOL_PREFIX = f"mcp__plugin_{PLUGIN}_{SERVER}__"
TOOL_NAMES = {fn.__name__ for fn, _ in TOOLS}
KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Fields of plugin.json (mcp-conventions.md §6.2); anything else is dropped with a warning.
MANIFEST_FIELDS = {
    "name", "displayName", "version", "description", "author", "homepage", "repository",
    "license", "keywords", "metadata", "$schema", "defaultEnabled", "dependencies",
    "settings", "commands", "agents", "skills", "hooks", "mcpServers", "lspServers",
    "outputStyles", "workflows", "userConfig", "channels",
}
PATH_FIELDS = ("commands", "agents", "skills", "hooks", "mcpServers", "lspServers",
               "outputStyles", "workflows")


def load_json(relative: str) -> Any:
    return json.loads((REPO / relative).read_text(encoding="utf-8"))


def manifest() -> dict[str, Any]:
    return load_json(".claude-plugin/plugin.json")


def command_files() -> list[Path]:
    commands = manifest()["commands"]
    return [REPO / path for path in ([commands] if isinstance(commands, str) else commands)]


# -- a tiny frontmatter reader (no YAML dependency) ---------------------------------------


def parse_frontmatter(text: str) -> dict[str, str | list[str]]:
    """The ``key: value`` lines (and ``- item`` lists) between the leading ``---`` lines."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ValueError("the file does not start with a '---' frontmatter line")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise ValueError("the frontmatter has no closing '---' line") from None
    fields: dict[str, str | list[str]] = {}
    key = None
    for number, line in enumerate(lines[1:end], 2):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        items = fields.get(key) if key is not None else None
        if stripped.startswith("- ") and isinstance(items, list):
            items.append(_unquote(stripped[2:]))
            continue
        name, colon, value = line.partition(":")
        if not colon or not KEBAB.match(name) and not name.isidentifier():
            raise ValueError(f"frontmatter line {number} is not 'key: value': {line!r}")
        key, value = name, value.strip()
        fields[key] = _unquote(value) if value else []  # nothing after the colon: a list
    return fields


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def tool_list(value: str | list[str]) -> list[str]:
    """``allowed-tools`` as names: a YAML list, or a comma/space separated string."""
    if isinstance(value, list):
        return value
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    names, depth, current = [], 0, ""
    for char in value:  # split outside parentheses: Bash(git add:*) is one name
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and (char in ", "):
            names.append(current)
            current = ""
        else:
            current += char
    return [_unquote(name) for name in [*names, current] if name]


def test_frontmatter_parser() -> None:
    text = "---\ndescription: \"Draw: things\"\nallowed-tools:\n  - a\n  - 'b'\n" \
           "# comment\nargument-hint: [what to draw]\n---\nbody: not read\n"
    assert parse_frontmatter(text) == {
        "description": "Draw: things", "allowed-tools": ["a", "b"],
        "argument-hint": "[what to draw]",
    }
    assert tool_list("a, b c,Bash(git add:*)") == ["a", "b", "c", "Bash(git add:*)"]
    for broken in ("no frontmatter", "---\nkey: value\n", "---\njust words\n---\n"):
        with pytest.raises(ValueError):
            parse_frontmatter(broken)


# -- plugin.json --------------------------------------------------------------------------


def test_manifest_fields() -> None:
    data = manifest()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["name"] == PLUGIN and KEBAB.match(data["name"])
    assert data["version"] == pyproject["project"]["version"] == comfy_mcp.__version__
    assert isinstance(data["description"], str) and data["description"].strip()
    assert isinstance(data["author"], dict) and isinstance(data["author"]["name"], str)
    assert set(data["author"]) <= {"name", "email", "url"}
    assert data["license"] == pyproject["project"]["license"] == "MIT"
    assert all(isinstance(word, str) for word in data.get("keywords", []))
    assert set(data) <= MANIFEST_FIELDS, set(data) - MANIFEST_FIELDS
    for key in ("homepage", "repository"):
        if key in data:
            assert re.match(r"^https://\S+$", data[key]), f"{key} must be a real URL"


def test_manifest_paths() -> None:
    data = manifest()
    paths: list[str] = []
    for key in PATH_FIELDS:
        value = data.get(key)
        if isinstance(value, str):
            paths.append(value)
        elif isinstance(value, list):
            paths += [item for item in value if isinstance(item, str)]
    assert paths, "the manifest names no component files"
    for path in paths:
        assert path.startswith("./"), f"{path} must start with ./"
        assert ".." not in Path(path).parts, f"{path} leaves the plugin folder"
        assert (REPO / path).exists(), f"{path} does not exist"


def test_commands_have_frontmatter() -> None:
    for path in command_files():
        fields = parse_frontmatter(path.read_text(encoding="utf-8"))
        for key in ("description", "argument-hint", "allowed-tools"):
            assert fields.get(key), f"{path.name}: no {key} in the frontmatter"
        assert "$ARGUMENTS" in path.read_text(encoding="utf-8")



def test_commands_use_plugin_tool_names() -> None:
    for path in command_files():
        tools = tool_list(parse_frontmatter(path.read_text(encoding="utf-8"))["allowed-tools"])
        mcp_tools = [name for name in tools if name.startswith("mcp__")]
        assert mcp_tools, f"{path.name} allows no MCP tool"
        for name in mcp_tools:
            assert name.startswith(TOOL_PREFIX), f"{name}: plugin tools are {TOOL_PREFIX}<tool>"
            assert name.removeprefix(TOOL_PREFIX) in TOOL_NAMES, f"{name}: no such tool"


def test_plugin_tool_names_are_valid() -> None:
    for name in TOOL_NAMES:
        full = TOOL_PREFIX + name
        assert re.match(r"^[A-Za-z0-9_-]{1,64}$", full), full


# -- the bundled MCP server and its launcher ------------------------------------------------


def mcp_server() -> dict[str, Any]:
    """Inline in plugin.json: a root .mcp.json would also load as a broken project server
    (no ${CLAUDE_PLUGIN_ROOT} there) for anyone running Claude Code in this repository."""
    assert not (REPO / ".mcp.json").exists()
    servers = manifest()["mcpServers"]
    assert list(servers) == [SERVER]
    return servers[SERVER]


def launcher() -> Path:
    command = mcp_server()["command"]
    assert command.startswith("${CLAUDE_PLUGIN_ROOT}/"), command
    return REPO / command.removeprefix("${CLAUDE_PLUGIN_ROOT}/")


def test_mcp_config() -> None:
    server = mcp_server()
    assert set(server) <= {"command", "args", "env", "cwd"}
    assert all(isinstance(arg, str) for arg in server.get("args", []))
    assert all(isinstance(v, str) for v in server.get("env", {}).values())
    path = launcher()
    assert path.is_file() and os.access(path, os.X_OK), f"{path} is not executable"


def test_launcher_is_posix_sh() -> None:
    text = launcher().read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(launcher())], check=True)


def test_marketplace() -> None:
    data = load_json(".claude-plugin/marketplace.json")
    assert data["name"] == "comfy-mcp" and KEBAB.match(data["name"])
    assert isinstance(data["owner"], dict) and isinstance(data["owner"]["name"], str)
    (entry,) = data["plugins"]
    assert entry["name"] == PLUGIN and entry["source"] == "./"
    assert isinstance(entry.get("description", ""), str)
    assert (REPO / entry["source"] / ".claude-plugin" / "plugin.json").is_file()


# -- the launcher, for real ---------------------------------------------------------------


def copy_plugin(target: Path) -> None:
    """The files a commit of the working tree would hold: what a user's clone gets."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


async def start_once(root: Path, env: dict[str, str]) -> tuple[float, set[str], str]:
    from mcp import Client, StdioServerParameters

    started = time.perf_counter()
    params = StdioServerParameters(command=str(root / launcher().relative_to(REPO)), env=env)
    async with Client(params, read_timeout_seconds=600) as client:
        tools = await client.list_tools()
        seconds = time.perf_counter() - started
        queue = await client.call_tool("queue_status", {})
    return seconds, {tool.name for tool in tools.tools}, queue.content[0].text


@pytest.mark.anyio
@pytest.mark.skipif(bool(os.environ.get("COMFY_MCP_SKIP_PLUGIN_INSTALL")),
                    reason="COMFY_MCP_SKIP_PLUGIN_INSTALL is set")
@pytest.mark.skipif(sys.platform == "win32", reason="the launcher is a POSIX shell script")
async def test_launcher_installs_then_starts_fast(tmp_path: Path) -> None:
    from fakecomfy import FakeComfy  # tests/ is on sys.path, as for test_fake_faults

    root, data = tmp_path / "plugin", tmp_path / "data"
    copy_plugin(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    async with FakeComfy.serve() as fake:
        env = {**os.environ, "CLAUDE_PLUGIN_ROOT": str(root), "CLAUDE_PLUGIN_DATA": str(data),
               "COMFYUI_URL": fake.url, "COMFY_MCP_OUTPUT_DIR": str(tmp_path / "out"),
               "COMFY_MCP_DB": str(tmp_path / "history.sqlite3")}
        env.pop("VIRTUAL_ENV", None)
        first, tools, queue = await start_once(root, env)
        second, tools_again, _ = await start_once(root, env)
    print(f"launcher: first start {first:.1f} s (install), second {second:.2f} s")
    assert tools == tools_again == TOOL_NAMES
    assert "queue" in queue  # COMFYUI_URL reached the server: it talked to the fake
    assert second < min(first, 10.0)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    assert len(list((data / "venvs").iterdir())) == 1
    assert not (data / "install.lock").exists()
