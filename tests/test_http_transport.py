"""``comfy-mcp serve --http``: loopback by default, no DNS rebinding, a token elsewhere.

Servers run on 127.0.0.1 only. The "bound to another address" rules are checked
without binding one: the start-up check as a unit, the CLI with ``bind`` replaced by a
function that fails the test, and the token middleware in-process on 127.0.0.1 with the
token switched on.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from fakecomfy import FakeComfy
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from comfy_mcp import cli, http_transport
from comfy_mcp.config import Settings
from comfy_mcp.errors import ConfigError
from comfy_mcp.http_transport import build_app, check_exposure, is_loopback
from comfy_mcp.server import build_server

pytestmark = pytest.mark.anyio

TOKEN = "a-long-random-http-token-0123456789"
REPO = Path(__file__).resolve().parent.parent
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "probe", "version": "1"}}}
JSON_HEADERS = {"accept": "application/json, text/event-stream",
                "content-type": "application/json"}


# -- the start-up check ----------------------------------------------------------------------


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("localhost", True), ("LOCALHOST", True),
    ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("10.0.0.1", False), ("example.lan", False), ("", False), ("::ffff:127.0.0.1", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "my-pc.lan"])
def test_other_address_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_exposure(host, {})
    message = str(info.value)
    assert f"refusing to listen on {host} without a token" in message
    assert "COMFY_MCP_HTTP_TOKEN" in message and "127.0.0.1" in message
    assert check_exposure(host, {"COMFY_MCP_HTTP_TOKEN": TOKEN}) == TOKEN


def test_loopback_token_is_optional_but_used_when_set() -> None:
    assert check_exposure("127.0.0.1", {}) is None
    assert check_exposure("127.0.0.1", {"COMFY_MCP_HTTP_TOKEN": "  "}) is None
    assert check_exposure("127.0.0.1", {"COMFY_MCP_HTTP_TOKEN": TOKEN}) == TOKEN


def test_short_token_refused_without_echo() -> None:
    with pytest.raises(ConfigError, match="shorter than 16") as info:
        check_exposure("0.0.0.0", {"COMFY_MCP_HTTP_TOKEN": "hunter2"})
    assert "hunter2" not in str(info.value)


@pytest.fixture
def no_bind(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make any attempt to listen fail the test (and record it)."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise AssertionError("tried to bind")

    monkeypatch.setattr(http_transport, "bind", refuse)
    monkeypatch.setattr(http_transport, "serve_http", refuse)
    return attempts


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_cli_refuses_other_address_without_token(
    host: str, no_bind: list[Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("COMFY_MCP_HTTP_TOKEN", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--http", "--host", host, "--port", "1"])
    assert "without a token" in str(info.value.code) and "COMFY_MCP_HTTP_TOKEN" in str(
        info.value.code)
    assert no_bind == []


def test_cli_host_without_http_is_an_error(no_bind: list[Any]) -> None:
    with pytest.raises(SystemExit, match="only apply with --http"):
        cli.main(["serve", "--host", "127.0.0.1"])
    with pytest.raises(SystemExit):
        cli.main(["serve", "--http", "--port", "70000"])  # argparse: not a port
    assert no_bind == []


# -- in-process servers on 127.0.0.1 ---------------------------------------------------------


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfy]:
    async with FakeComfy.serve() as server:
        yield server


@asynccontextmanager
async def running(app: Any, sock: Any) -> AsyncIterator[None]:
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none",
                            lifespan="on", timeout_graceful_shutdown=1)
    server = _Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        with anyio.fail_after(5):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True


@asynccontextmanager
async def mcp_http(fake: FakeComfy, tmp_path: Path, *, token: str | None = None,
                   guard: bool = True, **options: Any) -> AsyncIterator[str]:
    """Serve comfy-mcp on a free 127.0.0.1 port; yields the /mcp URL."""
    settings = Settings(comfyui_url=fake.url, output_dir=tmp_path / "out", wait_limit=5,
                        **options)
    sock = http_transport.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = build_server(settings)
    if guard:
        app = build_app(server, host="127.0.0.1", port=port, token=token,
                        max_body_bytes=http_transport.body_limit(settings.upload_max_bytes))
    else:  # the SDK's own Host/Origin check alone
        app = server.streamable_http_app(
            transport_security=http_transport.transport_security("127.0.0.1", port))
    async with running(app, sock):
        yield f"http://127.0.0.1:{port}/mcp"


async def post(url: str, **headers: str | bytes) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(url, json=INIT, headers={**JSON_HEADERS, **headers})


async def test_mcp_works_over_http(fake: FakeComfy, tmp_path: Path) -> None:
    async with mcp_http(fake, tmp_path) as url, Client(url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"generate_art", "upload_image", "gpu_stats"} <= names
        stats = await client.call_tool("gpu_stats", {})
        assert not stats.is_error and "VRAM" in stats.content[0].text
        result = await client.call_tool("generate_art", {
            "prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 5})
        assert not result.is_error, result.content[0].text
        assert any(c.type == "image" for c in result.content)


async def test_large_base64_upload_fits_the_body_limit(fake: FakeComfy, tmp_path: Path) -> None:
    """The SDK's default 4 MiB body limit would refuse an upload_image of 3.6 MB."""
    buffer = io.BytesIO()
    Image.effect_noise((1100, 1100), 60).convert("RGB").save(buffer, "BMP")
    data = base64.b64encode(buffer.getvalue()).decode()
    assert len(data) > 4 * 2**20
    async with mcp_http(fake, tmp_path, upload_max_bytes=8 * 2**20) as url, \
            Client(url) as client:
        result = await client.call_tool("upload_image", {"data": data, "filename": "big.bmp"})
    assert not result.is_error, result.content[0].text
    assert fake.files[("input", "", "big.bmp")] == buffer.getvalue()


@pytest.mark.parametrize("guard", [True, False], ids=["full", "sdk-only"])
@pytest.mark.parametrize("headers, status", [
    ({"host": "evil.example"}, 421),
    ({"host": "evil.example:{port}"}, 421),
    ({"host": "127.0.0.1:1"}, 421),  # another port is another origin
    ({"host": "127.0.0.1"}, 421),
    ({"origin": "http://evil.example"}, 403),
    ({"origin": "http://127.0.0.1.evil.example:{port}"}, 403),
    ({"origin": "null"}, 403),
    ({"origin": "http://127.0.0.1:1"}, 403),
    ({"origin": "https://127.0.0.1:{port}"}, None),  # not a loopback origin we serve
    ({}, 200),
    ({"origin": "http://127.0.0.1:{port}"}, 200),
    ({"host": "localhost:{port}", "origin": "http://localhost:{port}"}, 200),
    ({"host": "[::1]:{port}"}, 200),
], ids=lambda value: str(value))
async def test_host_and_origin(
    fake: FakeComfy, tmp_path: Path, headers: dict[str, str], status: int | None, guard: bool
) -> None:
    async with mcp_http(fake, tmp_path, guard=guard) as url:
        port = url.split(":")[2].split("/")[0]
        sent = {k: v.format(port=port) for k, v in headers.items()}
        response = await post(url, **sent)
    if status is None:
        assert response.status_code in (403, 421)
    elif status == 200:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == status or (guard and response.status_code == 403)


async def test_guard_covers_every_path_and_method(fake: FakeComfy, tmp_path: Path) -> None:
    async with mcp_http(fake, tmp_path, token=TOKEN) as url:
        base = url.removesuffix("/mcp")
        async with httpx.AsyncClient(trust_env=False) as http:
            for method, path in (("GET", "/mcp"), ("DELETE", "/mcp"), ("OPTIONS", "/mcp"),
                                 ("GET", "/"), ("POST", "/other"), ("GET", "/mcp/../x")):
                response = await http.request(method, base + path)
                assert response.status_code == 401, (method, path)
                response = await http.request(method, base + path, headers={
                    "origin": "http://evil.example", "authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 403, (method, path)


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN,
    f"Bearer  {TOKEN[::-1]}", "Bearer \xe9".encode("latin-1"), f"Bearer {TOKEN}".encode()
    + b"\xff",
], ids=repr)
async def test_token_required_when_set(
    fake: FakeComfy, tmp_path: Path, authorization: str | bytes | None
) -> None:
    async with mcp_http(fake, tmp_path, token=TOKEN) as url:
        headers = {} if authorization is None else {"authorization": authorization}
        response = await post(url, **headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


async def test_token_accepted(fake: FakeComfy, tmp_path: Path) -> None:
    async with mcp_http(fake, tmp_path, token=TOKEN) as url:
        assert (await post(url, authorization=f"Bearer {TOKEN}")).status_code == 200
        assert (await post(url, authorization=f"bearer {TOKEN}")).status_code == 200
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("list_templates", {})
            assert not result.is_error and "txt2img" in result.content[0].text
        with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises on 401
            async with Client(url) as client:
                await client.list_tools()


# -- the real command, in a subprocess ---------------------------------------------------------


def free_port() -> int:
    sock = http_transport.bind("127.0.0.1", 0)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


async def test_cli_serve_http_subprocess(fake: FakeComfy, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "COMFYUI_URL": fake.url, "COMFY_MCP_OUTPUT_DIR": str(tmp_path),
           "COMFY_MCP_HTTP_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "comfy_mcp", "serve", "--http", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        with anyio.fail_after(15):
            while True:
                try:
                    if (await post(url)).status_code == 401:
                        break
                except httpx.ConnectError:
                    assert process.poll() is None, process.stderr.read().decode()
                    await anyio.sleep(0.1)
        assert (await post(url, host="evil.example", authorization=f"Bearer {TOKEN}")
                ).status_code == 421
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("gpu_stats", {})
            assert not result.is_error
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    log = stderr.decode()
    assert f"MCP over HTTP at http://127.0.0.1:{port}/mcp (bearer token required)" in log
    assert TOKEN not in log
    assert "Traceback" not in log, log
