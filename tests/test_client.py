"""ComfyClient against scripted HTTP answers (httpx.MockTransport): URLs and error mapping."""

from __future__ import annotations

import json

import httpx
import pytest

from comfy_mcp.client import ComfyClient
from comfy_mcp.errors import (
    ComfyHTTPError,
    ComfyTimeout,
    ComfyUnreachable,
    InvalidParameter,
    PathRefused,
    PromptRejected,
    UploadTooLarge,
)

pytestmark = pytest.mark.anyio

GRAPH = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"},
               "_meta": {"title": "Load Checkpoint"}},
         "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}


def client_for(handler, base: str = "http://comfy.test:8188") -> ComfyClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ComfyClient(base, http=http)


async def test_path_prefix_is_kept() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    client = client_for(handler, "https://gw.test/comfyui-test")
    await client.history("P1")
    await client.queue()
    assert seen == ["https://gw.test/comfyui-test/history/P1",
                    "https://gw.test/comfyui-test/queue"]


async def test_submit_sends_wrapper_ids_and_exact_ints() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json={"prompt_id": "p", "number": 1, "node_errors": {}})

    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 2**64 - 1}}}
    await client_for(handler).submit(graph, prompt_id="p", client_id="c")
    raw = bodies[0].decode()
    assert "18446744073709551615" in raw and "e+19" not in raw
    body = json.loads(raw)
    assert body["prompt"] == graph and body["client_id"] == "c" and body["prompt_id"] == "p"


async def test_400_value_not_in_list_in_words() -> None:
    reply = {
        "error": {"type": "prompt_outputs_failed_validation",
                  "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
        "node_errors": {"4": {"errors": [{
            "type": "value_not_in_list", "message": "Value not in list",
            "details": "ckpt_name: 'v1-5.safetensors' not in []",
            "extra_info": {"input_name": "ckpt_name", "input_config": [[], {}],
                           "received_value": "v1-5.safetensors"}}],
            "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}}
    client = client_for(lambda r: httpx.Response(400, json=reply))
    with pytest.raises(PromptRejected) as info:
        await client.submit(GRAPH, prompt_id="p", client_id="c")
    text = str(info.value)
    assert "node 4 (Load Checkpoint), input 'ckpt_name'" in text
    assert "'v1-5.safetensors' is not available: this ComfyUI has no files" in text
    assert "{" not in text  # never raw JSON


async def test_200_with_node_errors_reports_dropped_outputs() -> None:
    reply = {"prompt_id": "p", "number": 3, "node_errors": {"92": {
        "errors": [{"type": "exception_during_validation", "message":
                    "Exception when validating node", "details": "'43069'", "extra_info": {}}],
        "dependent_outputs": ["92"], "class_type": "SaveVideo"}}}
    submitted = await client_for(lambda r: httpx.Response(200, json=reply)).submit(
        GRAPH, prompt_id="p", client_id="c")
    assert submitted.prompt_id == "p"
    assert [str(p) for p in submitted.dropped] == [
        "node 92 (SaveVideo): Exception when validating node: '43069'"]


async def test_reply_without_prompt_id_is_an_error() -> None:
    client = client_for(lambda r: httpx.Response(200, json={"exec_info": {}}))
    with pytest.raises(ComfyHTTPError, match="no prompt_id"):
        await client.submit(GRAPH, prompt_id="p", client_id="c")


async def test_connection_refused_names_url_and_variable() -> None:
    client = ComfyClient("http://127.0.0.1:1", timeout=2)
    with pytest.raises(ComfyUnreachable) as info:
        await client.system_stats()
    await client.aclose()
    assert "http://127.0.0.1:1" in str(info.value) and "COMFYUI_URL" in str(info.value)


async def test_read_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ComfyTimeout, match="did not answer within"):
        await client_for(handler).queue()


@pytest.mark.parametrize(
    ("status", "body", "ctype", "error", "words"),
    [
        (413, "Maximum request body size 104857600 exceeded", "text/plain", UploadTooLarge,
         "--max-upload-size"),
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html",
         ComfyHTTPError, "502 Bad Gateway"),
        (500, "500 Internal Server Error\n\nServer got itself in trouble", "text/plain",
         ComfyHTTPError, "Server got itself in trouble"),
    ],
)
async def test_non_json_errors_are_described(status, body, ctype, error, words) -> None:
    client = client_for(lambda r: httpx.Response(status, text=body,
                                                 headers={"content-type": ctype}))
    with pytest.raises(error) as info:
        await client.upload_image(b"x", "a.png")
    assert words in str(info.value) and "<h1>" not in str(info.value)


async def test_invalid_json_is_described() -> None:
    client = client_for(lambda r: httpx.Response(200, text="{not json"))
    with pytest.raises(ComfyHTTPError, match="Expected JSON"):
        await client.queue()


async def test_view_path_refused() -> None:
    client = client_for(lambda r: httpx.Response(403))
    with pytest.raises(PathRefused):
        await client.view("a.png", "../x")
    with pytest.raises(InvalidParameter, match="not a ComfyUI file type"):
        await client.view("a.png", "", type="secrets")


async def test_ids_cannot_change_the_path() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    client = client_for(handler, "https://proxy.test/comfy")
    await client.history("../../admin/users?all=1#")
    await client.object_info("../x")
    assert seen == ["/comfy/history/..%2F..%2Fadmin%2Fusers%3Fall%3D1%23",
                    "/comfy/object_info/..%2Fx"]


async def test_download_is_capped() -> None:
    client = client_for(lambda r: httpx.Response(200, content=b"x" * 5000))
    client.max_download = 1000
    with pytest.raises(ComfyHTTPError, match="larger than 0 MiB"):
        await client.view("big.png")


async def test_reads_retry_a_proxy_blip_writes_do_not() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            return httpx.Response(502, text="<h1>502 Bad Gateway</h1>")
        return httpx.Response(200, json={"queue_running": [], "queue_pending": []})

    assert await client_for(handler).queue() == {"queue_running": [], "queue_pending": []}
    assert calls == ["GET", "GET"]
    calls.clear()
    with pytest.raises(ComfyHTTPError, match="502"):
        await client_for(handler).interrupt("p")
    assert calls == ["POST"]
