"""Untrusted data and credentials: tests that try to break the rules.

* Credentials for a ComfyUI behind a proxy (bearer token, basic auth, a login in the
  URL, custom headers) reach ComfyUI on HTTP and on the WebSocket handshake, never a
  log line (DEBUG on), an error message or ``repr(settings)``, and never another origin
  on a redirect (a second loopback server on another port stands in for that host).
* ``upload_image`` reads only images, below the size limit, from the allowed folders;
  links out of them are refused; client-sent bytes work too; names are sanitised and
  the name ComfyUI answers with is the one returned (B29).
* Names from a hostile ComfyUI never place a file outside the output folder, and never
  overwrite a file (B17, B26).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fakecomfy import FakeComfy, Fault, solid_png
from mcp import Client
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from comfy_mcp import outputs
from comfy_mcp.client import ComfyClient
from comfy_mcp.config import Settings
from comfy_mcp.errors import ComfyHTTPError, ConfigError
from comfy_mcp.events import EventStream
from comfy_mcp.server import build_server
from comfy_mcp.service import ComfyService

pytestmark = pytest.mark.anyio

TOKEN = "tok123-very-secret-bearer"
PASSWORD = "pw-very-secret-basic"
API_KEY = "key-very-secret-header"
TINY = {"width": 64, "height": 64, "steps": 2}


def secrets_of(headers: dict[str, str]) -> list[str]:
    """Every form in which a credential could leak: raw, and base64 for basic auth."""
    found = [TOKEN, PASSWORD, API_KEY]
    for value in headers.values():
        scheme, _, credential = value.partition(" ")
        found.append(credential or value)
        if scheme == "Basic":
            found.append(base64.b64decode(credential).decode())
    return [s for s in found if s]


# -- servers ---------------------------------------------------------------------------------


class RecordingFake(FakeComfy):
    """The fake ComfyUI, also recording the headers of every WebSocket handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ws_headers: list[dict[str, str]] = []
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "websocket":
                self.ws_headers.append({k.decode().lower(): v.decode()
                                        for k, v in scope["headers"]})
            await inner(scope, receive, send)

        self.app = app


class HostileFake(FakeComfy):
    """A ComfyUI whose /view serves whatever name it is asked for (see B17)."""

    async def _get_view(self, request: Request) -> Response:
        return Response(solid_png(8, 8, (200, 10, 10)), media_type="image/png")


class RawServer:
    """A loopback TCP server that records what it receives and answers one fixed reply."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, stream: Any) -> None:
        async with stream:
            data = b""
            with anyio.move_on_after(2):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive(65536)
                    if not chunk:
                        break
                    data += chunk
            self.received.append(data)
            try:
                await stream.send(self.reply)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    @classmethod
    async def serve(cls, tasks: Any, reply: bytes) -> RawServer:
        server = cls(reply)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        server.port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def run() -> None:
            async with listener:
                await listener.serve(server._handle)

        tasks.start_soon(run)
        return server


def redirect_to(location: str) -> bytes:
    return (f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()


@pytest.fixture
async def fake() -> AsyncIterator[RecordingFake]:
    async with RecordingFake.serve() as server:
        yield server


def png(width: int = 16, height: int = 12, color: str = "purple", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, fmt)
    return buffer.getvalue()


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


# -- settings --------------------------------------------------------------------------------


def test_token_becomes_bearer() -> None:
    settings = Settings.from_env({"COMFYUI_TOKEN": TOKEN})
    assert settings.headers == {"Authorization": f"Bearer {TOKEN}"}


def test_basic_auth_variable() -> None:
    settings = Settings.from_env({"COMFYUI_BASIC_AUTH": f"alice:{PASSWORD}"})
    encoded = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert settings.headers == {"Authorization": f"Basic {encoded}"}


def test_login_in_url_is_basic_auth_and_stripped() -> None:
    settings = Settings.from_env(
        {"COMFYUI_URL": f"https://al%40ice:{PASSWORD}%3A@comfy.test:8443/comfy/"})
    assert settings.comfyui_url == "https://comfy.test:8443/comfy"
    encoded = base64.b64encode(f"al@ice:{PASSWORD}:".encode()).decode()
    assert settings.headers == {"Authorization": f"Basic {encoded}"}


def test_custom_headers_json() -> None:
    settings = Settings.from_env({"COMFYUI_TOKEN": TOKEN,
                                  "COMFYUI_HEADERS": json.dumps({"X-Api-Key": API_KEY})})
    assert settings.headers == {"X-Api-Key": API_KEY, "Authorization": f"Bearer {TOKEN}"}


def test_secrets_not_in_repr() -> None:
    settings = Settings.from_env({"COMFYUI_URL": f"http://u:{PASSWORD}@127.0.0.1:8188",
                                  "COMFYUI_HEADERS": json.dumps({"X-Api-Key": API_KEY})})
    shown = repr(settings) + str(settings)
    assert PASSWORD not in shown and API_KEY not in shown
    assert base64.b64encode(f"u:{PASSWORD}".encode()).decode() not in shown


@pytest.mark.parametrize("env, words", [
    ({"COMFYUI_TOKEN": TOKEN, "COMFYUI_BASIC_AUTH": f"u:{PASSWORD}"}, "keep only one"),
    ({"COMFYUI_URL": f"http://u:{PASSWORD}@h", "COMFYUI_TOKEN": TOKEN}, "keep only one"),
    ({"COMFYUI_HEADERS": json.dumps({"Authorization": TOKEN}), "COMFYUI_TOKEN": TOKEN},
     "keep only one"),
    ({"COMFYUI_BASIC_AUTH": PASSWORD}, "user:password"),
    ({"COMFYUI_HEADERS": "{" + API_KEY}, "not valid JSON"),
    ({"COMFYUI_HEADERS": json.dumps([API_KEY])}, "JSON object"),
    ({"COMFYUI_HEADERS": json.dumps({"X-Key": API_KEY + "\r\nX-Evil: 1"})}, "line break"),
    ({"COMFYUI_HEADERS": json.dumps({"Bad Name": API_KEY})}, "not a valid header name"),
    ({"COMFYUI_HEADERS": json.dumps({"X-Key": 5})}, "must be a string"),
    ({"COMFYUI_TOKEN": TOKEN + "\n"}, None),  # trailing newline from a file: trimmed
    ({"COMFYUI_TOKEN": TOKEN + "\x00"}, "control"),
    ({"COMFYUI_TOKEN": TOKEN + "é"}, "non-ASCII"),
    ({"COMFYUI_URL": f"ftp://u:{PASSWORD}@h"}, "not an http(s) URL"),
    ({"COMFYUI_URL": f"http://u:{PASSWORD}@h:99999"}, "not a valid URL"),
    ({"COMFYUI_URL": f"http://u:{PASSWORD}@h/?token={TOKEN}"}, "query"),
])
def test_credential_errors_never_echo_secrets(env: dict[str, str], words: str | None) -> None:
    if words is None:
        assert Settings.from_env(env).headers["Authorization"] == f"Bearer {TOKEN}"
        return
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert words in message
    for secret in (TOKEN, PASSWORD, API_KEY):
        assert secret not in message


# -- credentials on the wire -----------------------------------------------------------------


@pytest.mark.parametrize("env", [
    {"COMFYUI_TOKEN": TOKEN},
    {"COMFYUI_BASIC_AUTH": f"alice:{PASSWORD}",
     "COMFYUI_HEADERS": json.dumps({"X-Api-Key": API_KEY})},
    {"COMFYUI_URL_LOGIN": f"alice:{PASSWORD}"},
], ids=["bearer", "basic+header", "url-login"])
async def test_credentials_on_http_and_websocket_not_in_logs(
    fake: RecordingFake, tmp_path: Path, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = dict(env)
    login = env.pop("COMFYUI_URL_LOGIN", None)
    env["COMFYUI_URL"] = fake.url.replace("://", f"://{login}@") if login else fake.url
    env["COMFY_MCP_OUTPUT_DIR"] = str(tmp_path / "out")
    settings = Settings.from_env(env)
    assert settings.comfyui_url == fake.url
    expected = dict(settings.headers)
    async with ComfyService.open(settings) as service:
        assert service.stream is not None and await service.stream.wait_connected(2)
        gen = await service.generate("txt2img", {"prompt": "fox", "seed": 3, **TINY},
                                     wait_limit=5)
        assert gen.files and gen.files[0].path
        fake.fault("GET", "/queue", Fault(401, f"bad credentials {TOKEN}"))
        with pytest.raises(ComfyHTTPError) as info:
            await service.client.queue()
    assert fake.seen and fake.ws_headers
    for seen in fake.seen:
        for name, value in expected.items():
            assert seen.headers.get(name.lower()) == value, (seen.method, seen.path)
    for handshake in fake.ws_headers:
        for name, value in expected.items():
            assert handshake.get(name.lower()) == value
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "/ws" in logged or "WebSocket" in logged or "queued prompt" in logged  # logs exist
    for secret in secrets_of(expected):
        assert secret not in logged
        assert secret not in str(info.value).replace(f"bad credentials {TOKEN}", "")


async def test_http_redirect_is_not_followed_and_names_only_the_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with anyio.create_task_group() as tasks:
        other = await RawServer.serve(tasks, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        location = f"http://sso-user:sso-pass@127.0.0.1:{other.port}/login?ticket=sso-ticket"
        proxy = await RawServer.serve(tasks, redirect_to(location))
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY}
        async with ComfyClient(proxy.url, headers=headers) as client:
            with pytest.raises(ComfyHTTPError) as info:
                await client.queue()
        await anyio.sleep(0.2)
        tasks.cancel_scope.cancel()
    message = str(info.value)
    assert info.value.status == 307
    assert f"redirect to http://127.0.0.1:{other.port}" in message
    assert "does not follow redirects" in message
    for leaked in ("sso-", "login", "?"):  # the Location's own login, path and query
        assert leaked not in message
    assert proxy.received and TOKEN.encode() in proxy.received[0]  # the origin we trust
    assert other.received == []
    assert TOKEN not in caplog.text and API_KEY not in caplog.text


async def test_relative_redirect_names_the_same_origin() -> None:
    async with anyio.create_task_group() as tasks:
        proxy = await RawServer.serve(tasks, redirect_to(f"/sso?session={TOKEN}"))
        async with ComfyClient(proxy.url) as client:
            with pytest.raises(ComfyHTTPError) as info:
                await client.system_stats()
        tasks.cancel_scope.cancel()
    assert f"redirect to {proxy.url}." in str(info.value)
    assert TOKEN not in str(info.value)


async def test_websocket_redirect_is_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with anyio.create_task_group() as tasks:
        other = await RawServer.serve(tasks, b"HTTP/1.1 404 Not Found\r\n\r\n")
        proxy = await RawServer.serve(tasks, redirect_to(f"ws://127.0.0.1:{other.port}/ws"))
        stream = EventStream(proxy.url, headers={"Authorization": f"Bearer {TOKEN}",
                                                 "X-Api-Key": API_KEY}, open_timeout=2)
        tasks.start_soon(stream.run)
        with anyio.move_on_after(1.5):
            while not proxy.received:
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)
        tasks.cancel_scope.cancel()
    assert proxy.received, "the stream never tried to connect"
    assert b"GET /ws?clientId=" in proxy.received[0] and API_KEY.encode() in proxy.received[0]
    assert other.received == []
    assert not stream.connected and stream.connections == 0
    assert TOKEN not in caplog.text and API_KEY not in caplog.text


# -- upload_image ----------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    names = ("allowed", "out", "outside")
    found = {name: tmp_path / name for name in names}
    for folder in found.values():
        folder.mkdir()
    return found


@pytest.fixture
async def upload_client(fake: RecordingFake, folders: dict[str, Path]) -> AsyncIterator[Client]:
    settings = Settings(comfyui_url=fake.url, output_dir=folders["out"], wait_limit=5,
                        upload_dirs=(folders["allowed"], folders["out"]),
                        upload_max_bytes=200_000)
    async with Client(build_server(settings), raise_exceptions=True) as client:
        yield client


def uploads_seen(fake: FakeComfy) -> list[bytes]:
    return [s.body for s in fake.requests("POST", "/upload/image")]


async def upload(client: Client, **arguments: Any) -> tuple[bool, str]:
    result = await client.call_tool("upload_image", arguments)
    text = text_of(result)
    assert text.strip() != "Error executing tool upload_image", "an exception escaped"
    return result.is_error, text


async def test_upload_path_inside_allowed_folder(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    (folders["allowed"] / "ref.png").write_bytes(png())
    failed, text = await upload(upload_client, path=str(folders["allowed"] / "ref.png"))
    assert not failed, text
    assert "Uploaded as 'ref.png'" in text
    assert fake.files[("input", "", "ref.png")] == png()


async def test_upload_relative_path_looked_up_in_allowed_folders(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    (folders["out"] / "render.png").write_bytes(png())
    failed, text = await upload(upload_client, path="render.png")
    assert not failed, text


@pytest.mark.parametrize("path", [
    "../outside/secret.png",
    "{outside}/secret.png",
    "{allowed}/../outside/secret.png",
    "/etc/passwd",
    "~/.ssh/id_rsa",
    "~nosuchuser-xyz/a.png",
    "a\x00.png",
    "x" * 5000 + ".png",
    "/" + "a/" * 3000 + "b.png",
    "{allowed}",
    "",
], ids=["dotdot", "absolute-outside", "through-allowed", "etc-passwd", "home", "tilde-user",
        "nul", "long-name", "deep", "folder", "empty"])
async def test_upload_refuses_paths(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path], path: str
) -> None:
    (folders["outside"] / "secret.png").write_bytes(png())
    failed, text = await upload(upload_client, path=path.format(**folders))
    assert failed
    assert uploads_seen(fake) == []
    assert text.startswith("Error executing tool upload_image: ")


async def test_upload_refuses_symlink_out_of_allowed_folder(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    (folders["outside"] / "secret.png").write_bytes(png())
    (folders["allowed"] / "link.png").symlink_to(folders["outside"] / "secret.png")
    (folders["allowed"] / "dir").symlink_to(folders["outside"], target_is_directory=True)
    for path in ("link.png", str(folders["allowed"] / "link.png"), "dir/secret.png"):
        failed, text = await upload(upload_client, path=path)
        assert failed and "outside the folders" in text, (path, text)
    assert uploads_seen(fake) == []


async def test_upload_follows_symlink_that_stays_inside(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    (folders["out"] / "real.png").write_bytes(png())
    (folders["allowed"] / "alias.png").symlink_to(folders["out"] / "real.png")
    failed, text = await upload(upload_client, path="alias.png")
    assert not failed, text
    assert "'real.png'" in text  # the resolved file's name


async def test_upload_refuses_fifo_and_non_images(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    os.mkfifo(folders["allowed"] / "pipe.png")
    (folders["allowed"] / "notes.png").write_text("not an image")
    (folders["allowed"] / "empty.png").write_bytes(b"")
    for name, words in (("pipe.png", "not a regular file"), ("notes.png", "not an image"),
                        ("empty.png", "0 bytes")):
        failed, text = await upload(upload_client, path=name)
        assert failed and words in text, (name, text)
    assert uploads_seen(fake) == []


async def test_upload_size_limit(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    big = png(600, 600, "white", "BMP")  # about 1 MB, over the 200 kB limit
    (folders["allowed"] / "big.bmp").write_bytes(big)
    failed, text = await upload(upload_client, path="big.bmp")
    assert failed and "limit" in text
    failed, text = await upload(upload_client, data=base64.b64encode(big).decode())
    assert failed and "limit" in text and "COMFY_MCP_UPLOAD_MAX_MB" in text
    assert uploads_seen(fake) == []


async def test_upload_base64_data_and_sanitised_name(
    fake: RecordingFake, upload_client: Client
) -> None:
    data = base64.b64encode(png(color="red")).decode()
    failed, text = await upload(upload_client, data=data, filename="../../x/evil\x07name.png")
    assert not failed, text
    assert "Uploaded as 'evilname.png'" in text
    failed, text = await upload(upload_client, data="data:image/jpeg;base64,"
                                + base64.b64encode(png(fmt="JPEG")).decode(),
                                filename="C:\\Users\\me\\photo.png")
    assert not failed, text
    assert "Uploaded as 'photo.jpg'" in text  # the extension follows the real format
    failed, text = await upload(upload_client, data=data)
    assert not failed and "Uploaded as 'upload.png'" in text
    names = [key[2] for key in fake.files if key[0] == "input"]
    assert sorted(names) == ["evilname.png", "photo.jpg", "upload.png"]


@pytest.mark.parametrize("arguments, words", [
    ({}, "exactly one"),
    ({"path": "a.png", "data": "aGVsbG8="}, "exactly one"),
    ({"data": "!!!not base64!!!"}, "not valid base64"),
    ({"data": base64.b64encode(b"GIF89a but not really").decode()}, "not an image"),
    ({"data": "   "}, "data is empty"),
])
async def test_upload_bad_arguments(
    fake: RecordingFake, upload_client: Client, arguments: dict[str, Any], words: str
) -> None:
    failed, text = await upload(upload_client, **arguments)
    assert failed and words in text, text
    assert uploads_seen(fake) == []


async def test_upload_returns_the_name_comfyui_chose(
    fake: RecordingFake, upload_client: Client, folders: dict[str, Path]
) -> None:
    """B29: the same name with other bytes becomes 'ref (1).png' on the server."""
    (folders["allowed"] / "ref.png").write_bytes(png(color="red"))
    assert "'ref.png'" in (await upload(upload_client, path="ref.png"))[1]
    (folders["allowed"] / "ref.png").write_bytes(png(color="blue"))
    failed, text = await upload(upload_client, path="ref.png")
    assert not failed and "Uploaded as 'ref (1).png'" in text


@pytest.mark.parametrize("reply", ["[]", '{"name": 5}', '{"subfolder": "x"}', "null"])
async def test_upload_reply_without_a_name(
    fake: RecordingFake, upload_client: Client, reply: str
) -> None:
    fake.fault("POST", "/upload/image", Fault(200, reply, "application/json"))
    failed, text = await upload(upload_client, data=base64.b64encode(png()).decode())
    assert failed and "names no file" in text


async def test_upload_413_from_comfyui(fake: RecordingFake, upload_client: Client) -> None:
    fake.fault("POST", "/upload/image", Fault.too_large())
    failed, text = await upload(upload_client, data=base64.b64encode(png()).decode())
    assert failed and "--max-upload-size" in text


def test_upload_settings_from_env(tmp_path: Path) -> None:
    env = {"COMFY_MCP_UPLOAD_DIRS": os.pathsep.join([str(tmp_path / "a"), "", "~/b"]),
           "COMFY_MCP_UPLOAD_MAX_MB": "1.5", "COMFY_MCP_OUTPUT_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert settings.upload_roots() == [tmp_path / "a", Path("~/b").expanduser()]
    assert settings.upload_max_bytes == int(1.5 * 2**20)
    default = Settings.from_env({"COMFY_MCP_OUTPUT_DIR": str(tmp_path)})
    assert default.upload_roots() == [Path.cwd(), tmp_path]
    assert default.upload_max_bytes == 50 * 2**20
    for bad in ("0", "-1", "nan", "inf", "lots"):
        with pytest.raises(ConfigError, match="COMFY_MCP_UPLOAD_MAX_MB"):
            Settings.from_env({"COMFY_MCP_UPLOAD_MAX_MB": bad})


# -- outputs from a hostile ComfyUI ----------------------------------------------------------


HOSTILE_OUTPUTS = [
    ("../../evil.png", ""),
    ("/tmp/evil-abs.png", ""),
    ("a.png", "../../escape"),
    ("a.png", "/etc"),
    ("a.png", "C:\\Windows"),
    ("b.png", "..\\..\\win"),
    ("nul\x00.png", ""),
    ("x" * 300 + ".png", ""),
    ("CON.png", ""),
    ("ok.png", "link/inner"),
]


async def test_hostile_output_names_stay_in_the_output_folder(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    (out / "keep.png").write_bytes(b"user's own file")
    prompt_id = "11111111-2222-4333-8444-555555555555"
    images = [{"filename": f, "subfolder": s, "type": "output"} for f, s in HOSTILE_OUTPUTS]
    images.append({"filename": "keep.png", "subfolder": "", "type": "output"})
    async with HostileFake.serve() as fake:
        fake.history[prompt_id] = {
            "prompt": [0, prompt_id, {}, {}, ["9"]],
            "outputs": {"9": {"images": images}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        settings = Settings(comfyui_url=fake.url, output_dir=out, wait_limit=5)
        async with Client(build_server(settings), raise_exceptions=True) as client:
            result = await client.call_tool("get_result", {"prompt_id": prompt_id})
    text = text_of(result)
    assert text.strip() != "Error executing tool get_result"
    assert [p for p in outside.rglob("*")] == []
    assert not Path("/tmp/evil-abs.png").exists()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert (out / "keep.png").read_bytes() == b"user's own file"  # never overwritten
    assert written == ["keep-1.png", "keep.png"], written
    assert not any(".." in name for name in written)


# -- bugs found by these tests, since fixed ----------------------------------------------


def test_check_readable_file_unknown_user_home(tmp_path: Path) -> None:
    with pytest.raises(outputs.InputFileError):
        outputs.check_readable_file("~nosuchuser-xyz/a.png", [tmp_path], max_bytes=10)


def test_check_readable_file_very_long_name(tmp_path: Path) -> None:
    with pytest.raises(outputs.InputFileError):
        outputs.check_readable_file("x" * 5000 + ".png", [tmp_path], max_bytes=10)


async def test_client_headers_are_not_sent_to_redirect_target_even_by_httpx_default() -> None:
    """Belt and braces: the client's own httpx client is built with follow_redirects=False."""
    client = ComfyClient("http://127.0.0.1:9", headers={"Authorization": "Bearer x"})
    try:
        assert client._http.follow_redirects is False
        assert isinstance(client._http, httpx.AsyncClient)
    finally:
        await client.aclose()
