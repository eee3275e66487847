"""ComfyService against the fake ComfyUI (tests/fakecomfy.py): the field cases of
shared/field-cases.md, each driven over real HTTP and WebSocket on 127.0.0.1.

A few tests shorten comfy_mcp's private waits with monkeypatch, to stay fast:
``jobs._WS_SAFETY_POLL`` (5 s: how often a job is polled while the socket is open) and
``service._SOCKET_GRACE`` (2 s: how long each run waits for a socket that never opens).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakecomfy import CHECKPOINTS, Failure, FakeComfy, Fault, solid_png

from comfy_mcp import formatting, jobs
from comfy_mcp import service as service_module
from comfy_mcp.config import Settings
from comfy_mcp.errors import (
    ComfyError,
    ComfyHTTPError,
    JobFailed,
    JobInterrupted,
    JobLost,
    JobStillRunning,
    OutOfMemory,
    PromptNotFound,
    PromptRejected,
    UploadTooLarge,
)
from comfy_mcp.jobs import ProgressCallback
from comfy_mcp.service import ComfyService, Generation
from comfy_mcp.workflows import TemplateLibrary

pytestmark = pytest.mark.anyio

TINY = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfy]:
    async with FakeComfy.serve() as server:
        yield server


@asynccontextmanager
async def opened(
    fake: FakeComfy, tmp_path: Path, *, connect: bool = True, **settings: Any
) -> AsyncIterator[ComfyService]:
    """A ComfyService on the fake; by default its WebSocket is open before it is used."""
    config = Settings(comfyui_url=fake.url, output_dir=tmp_path / "out", poll_interval=0.2,
                      wait_limit=5.0, **settings)
    async with ComfyService.open(config) as service:
        if connect:
            assert service.stream is not None
            assert await service.stream.wait_connected(2.0)
        yield service


@pytest.fixture
async def service(fake: FakeComfy, tmp_path: Path) -> AsyncIterator[ComfyService]:
    async with opened(fake, tmp_path) as opened_service:
        yield opened_service


async def generate(service: ComfyService, seed: int = 1, *, wait_limit: float = 3.0,
                   on_progress: ProgressCallback | None = None, **params: Any) -> Generation:
    values = {"prompt": "a red fox in the snow", "seed": seed, **TINY, **params}
    return await service.generate("txt2img", values, wait_limit=wait_limit,
                                  on_progress=on_progress)


def txt2img(seed: int = 1) -> dict[str, Any]:
    """The built-in txt2img graph, filled for the fake (for ComfyService.run)."""
    values = {"prompt": "a red fox", "seed": seed, "checkpoint": CHECKPOINTS[0], **TINY}
    return TemplateLibrary().get("txt2img").fill(values)


def names(generation: Generation) -> list[tuple[str, str, str]]:
    return [(f.output.filename, f.output.subfolder, f.output.type) for f in generation.files]


def assert_saved_as_served(fake: FakeComfy, generation: Generation) -> None:
    """Every file was saved, byte for byte what the fake rendered for this prompt."""
    assert names(generation) == fake.outputs_of(generation.prompt_id)
    for saved in generation.files:
        out = saved.output
        assert saved.error is None and saved.path is not None
        assert saved.path.read_bytes() == fake.files[(out.type, out.subfolder, out.filename)]


def posted_prompts(fake: FakeComfy) -> list[dict[str, Any]]:
    return [seen.json() for seen in fake.requests("POST", "/prompt")]


async def running_id(fake: FakeComfy) -> str:
    await fake.until(lambda: fake.running is not None)
    assert fake.running_id is not None
    return fake.running_id


# -- the ordinary run, and what every run must send --------------------------------------------


async def test_txt2img_runs_end_to_end(fake: FakeComfy, service: ComfyService) -> None:
    generation = await generate(service)
    assert names(generation) == [("txt2img_00001_.png", "comfy-mcp", "output")]
    assert_saved_as_served(fake, generation)
    assert (generation.files[0].width, generation.files[0].height) == (64, 64)
    assert not generation.cached and generation.previews


async def test_b04_b05_ids_sent_with_the_prompt(fake: FakeComfy, service: ComfyService) -> None:
    """B05: client_id is the socket's clientId; B04: our own id, a lowercase uuid4."""
    generation = await generate(service)
    [body] = posted_prompts(fake)
    assert body["client_id"] == fake.ws_clients[0] == service.stream.client_id
    prompt_id = body["prompt_id"]
    assert prompt_id == str(uuid.UUID(prompt_id)) and uuid.UUID(prompt_id).version == 4
    assert generation.prompt_id == prompt_id
    assert "prompt" in body and body["prompt"]["3"]["inputs"]["seed"] == 1


# -- completion detection ----------------------------------------------------------------------


async def test_b01_history_written_after_success(fake: FakeComfy, service: ComfyService) -> None:
    first = await generate(service, seed=1)
    fake.script.history_delay = 0.3
    second = await generate(service, seed=2)
    assert names(second) == [("txt2img_00002_.png", "comfy-mcp", "output")]
    assert names(first) != names(second)
    assert_saved_as_served(fake, second)
    assert all(seen.path != "/history" for seen in fake.seen)  # never "the newest entry"


async def test_b01_socket_lost_between_success_and_history(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.history_delay = 0.3
    fake.script.drop_ws_after = "execution_success"
    generation = await generate(service)
    assert_saved_as_served(fake, generation)
    assert len(generation.files) == 1


def preview_then_fail_graph() -> dict[str, Any]:
    """B02: a PreviewImage branch that runs first, then the txt2img branch."""
    graph = {
        "11": {"class_type": "EmptyImage",
               "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    return {**graph, **txt2img()}


async def test_b02_error_after_partial_preview(
    fake: FakeComfy, service: ComfyService, tmp_path: Path
) -> None:
    fake.script.failure = Failure("3")
    with pytest.raises(JobFailed) as info:
        await service.run(preview_then_fail_graph(), wait_limit=3)
    error = info.value
    assert type(error) is JobFailed
    assert (error.node_id, error.class_type, error.exception_type) == ("3", "KSampler",
                                                                       "RuntimeError")
    assert error.exception_message == (
        "mat1 and mat2 shapes cannot be multiplied (77x2048 and 768x320)")
    prompt_id = fake.started[0]
    assert error.prompt_id == prompt_id and prompt_id in str(error)
    assert fake.outputs_of(prompt_id)[0][2] == "temp"  # the partial preview exists...
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


async def test_b02_success_waits_for_every_output(fake: FakeComfy, service: ComfyService) -> None:
    _, result = await service.run(preview_then_fail_graph(), wait_limit=3)
    kinds = sorted((f.node_id, f.type) for f in result.files)
    assert kinds == [("12", "temp"), ("9", "output")]
    assert fake.event_kinds(result.prompt_id).count("executed") == 2


async def test_b03_fully_cached_rerun(fake: FakeComfy, service: ComfyService) -> None:
    first = await generate(service, seed=42)
    started = time.perf_counter()
    second = await generate(service, seed=42)
    assert time.perf_counter() - started < 1.0
    assert second.cached and not first.cached
    assert names(second) == names(first)
    executing = [d for k, d in fake.events[second.prompt_id] if k == "executing"]
    assert [d["node"] for d in executing] == [None]  # nothing ran


async def test_b03_cached_outputs_only_on_the_socket(
    fake: FakeComfy, service: ComfyService
) -> None:
    first = await generate(service, seed=42)
    fake.script.cached_outputs_in_history = False
    second = await generate(service, seed=42)
    assert fake.history[second.prompt_id]["outputs"] == {}
    assert second.cached and names(second) == names(first)


async def test_b03_cached_outputs_reported_nowhere(fake: FakeComfy, service: ComfyService) -> None:
    """Variant A: success with no outputs at all: it ends at once, a success with a note."""
    await generate(service, seed=42)
    fake.script.cached_outputs_in_history = False
    fake.script.cached_executed_events = False
    started = time.perf_counter()
    second = await generate(service, seed=42)
    assert time.perf_counter() - started < 1.0
    assert second.cached and second.files == []
    assert "did not report the cached files" in formatting.generation_text(second)


async def test_b04_events_before_the_prompt_reply(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.events_before_reply = True
    started = time.perf_counter()
    generation = await generate(service)
    assert time.perf_counter() - started < 1.0  # from the socket, not a late safety poll
    assert_saved_as_served(fake, generation)
    assert fake.event_kinds(generation.prompt_id)[-1] == "executing"


async def test_b05_socket_gets_only_status_frames(
    fake: FakeComfy, service: ComfyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_WS_SAFETY_POLL", 0.3)
    fake.script.lose_targeted = True
    fake.script.duration = 0.2
    generation = await generate(service)
    assert_saved_as_served(fake, generation)


async def test_b05_busy_server_does_not_starve_the_safety_poll(
    fake: FakeComfy, service: ComfyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_WS_SAFETY_POLL", 0.6)
    fake.script.lose_targeted = True
    fake.script.duration = 0.1

    async def other_users() -> None:  # a queue change (status to all) every 50 ms
        for color in range(100):
            fake.enqueue({"1": {"class_type": "EmptyImage", "inputs": {
                "width": 8, "height": 8, "batch_size": 1, "color": color}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}},
                client_id="someone-else")
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other_users)
        generation = await generate(service, wait_limit=1.5)
        tasks.cancel_scope.cancel()
    assert_saved_as_served(fake, generation)


async def test_b07_wait_limit_then_get_result(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.duration = 0.8
    with pytest.raises(JobStillRunning) as info:
        await generate(service, wait_limit=0.3)
    prompt_id = info.value.prompt_id
    assert prompt_id == fake.running_id and prompt_id in str(info.value)
    assert not fake.requests("POST", "/interrupt") and not fake.requests("POST", "/queue")
    generation = await service.result(prompt_id, wait_limit=3)
    assert generation.prompt_id == prompt_id
    assert_saved_as_served(fake, generation)


# -- networking --------------------------------------------------------------------------------


async def test_b08_websocket_refused_completes_by_polling(
    fake: FakeComfy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "_SOCKET_GRACE", 0.1)  # not wait 2 s for it
    fake.script.refuse_ws = True
    fake.script.duration = 0.2
    async with opened(fake, tmp_path, connect=False) as service:
        generation = await generate(service)
        assert service.stream is not None and service.stream.connections == 0
    assert_saved_as_served(fake, generation)
    assert fake.ws_clients == [] and fake.requests("GET", "/queue")


async def test_b08_silent_socket_completes_by_polling(
    fake: FakeComfy, service: ComfyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_WS_SAFETY_POLL", 0.3)
    fake.script.silent_ws = True
    fake.script.duration = 0.2
    generation = await generate(service)
    assert_saved_as_served(fake, generation)
    assert fake.events[generation.prompt_id]  # it ran, but the socket heard nothing


async def test_b08_socket_drops_mid_job(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.drop_ws_after = "progress"  # at 0.2 s; the stream is back at about 0.7 s
    fake.script.duration = 1.2
    fake.script.steps = 6
    generation = await generate(service)
    assert_saved_as_served(fake, generation)
    assert service.stream is not None and service.stream.connections == 2
    assert len(fake.ws_clients) == 2 and len(set(fake.ws_clients)) == 1  # same clientId


async def test_b10_concurrent_jobs_share_one_socket(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 0.05
    fake.enqueue(txt2img(seed=99))  # another user's job, no client_id: progress to all
    results: dict[int, Generation] = {}

    async def one(seed: int) -> None:
        results[seed] = await generate(service, seed=seed, wait_limit=5)

    async with anyio.create_task_group() as tasks:
        for seed in (11, 12, 13):
            tasks.start_soon(one, seed)
    assert len({g.prompt_id for g in results.values()}) == 3
    for seed, generation in results.items():
        assert_saved_as_served(fake, generation)
        graph = fake.history[generation.prompt_id]["prompt"][2]
        assert graph["3"]["inputs"]["seed"] == seed
    files = [f for g in results.values() for f in names(g)]
    assert len(files) == len(set(files)) == 3
    assert service.stream is not None and service.stream.connections == 1
    assert len(fake.ws_clients) == 1


async def test_restart_mid_job_is_lost(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.duration = 5.0

    async def restart() -> None:
        await running_id(fake)
        await fake.restart()

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(restart)
        with pytest.raises(JobLost) as info:
            await generate(service, wait_limit=4)
    assert time.perf_counter() - started < 3.0
    assert fake.started and info.value.prompt_id == fake.started[0]
    assert fake.started[0] in str(info.value)


async def test_restart_with_downtime_is_lost(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.duration = 5.0

    async def restart() -> None:
        await running_id(fake)
        await fake.restart(downtime=0.5)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(restart)
        with pytest.raises(JobLost) as info:
            await generate(service, wait_limit=4)
    assert info.value.prompt_id == fake.started[0]


async def test_proxy_blip_while_polling(
    fake: FakeComfy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "_SOCKET_GRACE", 0.1)
    fake.script.refuse_ws = True
    fake.script.duration = 0.5
    fake.fault("GET", "/queue", Fault.bad_gateway())
    async with opened(fake, tmp_path, connect=False) as service:
        generation = await generate(service)
    assert_saved_as_served(fake, generation)


# -- failures ----------------------------------------------------------------------------------


async def test_b21_out_of_memory(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.failure = Failure.oom("3")
    with pytest.raises(OutOfMemory) as info:
        await generate(service)
    error = info.value
    assert (error.node_id, error.class_type) == ("3", "KSampler")
    assert error.exception_type == "torch.OutOfMemoryError"
    assert error.exception_message == "Allocation on device"
    assert OutOfMemory.HINT in str(error) and "TIPS" not in str(error)
    assert len(fake.requests("POST", "/prompt")) == 1  # not resubmitted


async def test_b21_out_of_memory_seen_only_in_history(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.failure = Failure.oom("8")
    fake.script.duration = 0.3
    fake.script.drop_ws_after = "execution_start"
    fake.script.refuse_ws = True  # the socket stays down: only /history tells
    with pytest.raises(OutOfMemory) as info:
        await generate(service)
    assert (info.value.node_id, info.value.class_type) == ("8", "VAEDecode")
    assert OutOfMemory.HINT in str(info.value)
    assert service.stream is not None and service.stream.connections == 1  # never back
    assert fake.requests("GET", f"/history/{fake.started[0]}")


async def test_interrupted_by_someone_else(fake: FakeComfy, service: ComfyService) -> None:
    fake.script.interrupt_at = "3"
    with pytest.raises(JobInterrupted, match="node 3"):
        await generate(service)


async def test_b22_cancel_running_job_interrupts_it(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 5.0
    outcome = {}

    async def cancel() -> None:
        outcome["said"] = await service.cancel(await running_id(fake))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cancel)
        with pytest.raises(JobInterrupted):
            await generate(service)
    prompt_id = fake.started[0]
    assert outcome["said"] == "interrupted"
    [request] = fake.requests("POST", "/interrupt")
    assert request.json() == {"prompt_id": prompt_id}
    assert request.headers["content-type"] == "application/json"
    assert not fake.requests("POST", "/queue")
    messages = fake.history[prompt_id]["status"]["messages"]
    assert messages[-1][0] == "execution_interrupted"


async def test_b22_cancel_pending_running_finished_unknown(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 5.0
    running = fake.enqueue(txt2img(seed=1), client_id="someone-else")
    pending = fake.enqueue(txt2img(seed=2), client_id="someone-else")
    await fake.until(lambda: fake.running is running)

    assert await service.cancel(pending.prompt_id) == "removed from the queue"
    [delete] = fake.requests("POST", "/queue")
    assert delete.json() == {"delete": [pending.prompt_id]}
    assert not fake.requests("POST", "/interrupt")
    assert pending not in fake.pending and fake.running is running

    assert await service.cancel(running.prompt_id) == "interrupted"
    [interrupt] = fake.requests("POST", "/interrupt")
    assert interrupt.json() == {"prompt_id": running.prompt_id}
    await fake.until(lambda: running.prompt_id in fake.history)

    assert await service.cancel(running.prompt_id) == "already finished"
    assert len(fake.requests("POST", "/interrupt")) == 1
    assert len(fake.requests("POST", "/queue")) == 1
    with pytest.raises(PromptNotFound):
        await service.cancel("no-such-prompt")


async def test_b22_cancel_pending_job_ends_its_wait(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 5.0
    blocker = fake.enqueue(txt2img(seed=1), client_id="someone-else")
    await fake.until(lambda: fake.running is blocker)

    async def cancel() -> None:
        await fake.until(lambda: len(fake.pending) == 1)
        assert await service.cancel(fake.pending[0].prompt_id) == "removed from the queue"

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(cancel)
        with pytest.raises(JobInterrupted):
            await generate(service, seed=2, wait_limit=1.5)


async def test_cancelled_caller_interrupts_its_job(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 5.0
    following = anyio.Event()

    async def on_progress(fraction: float, message: str) -> None:
        following.set()  # the reply to POST /prompt is in: the job is being followed

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(generate, service, on_progress=on_progress))
        prompt_id = await running_id(fake)
        await following.wait()
        tasks.cancel_scope.cancel()
    [interrupt] = fake.requests("POST", "/interrupt")
    assert interrupt.json() == {"prompt_id": prompt_id}
    await fake.until(lambda: prompt_id in fake.history)
    assert fake.history[prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"


async def test_caller_cancelled_during_submit_interrupts_its_job(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.script.duration = 5.0
    fake.fault("POST", "/prompt", Fault.slow(0.5, after=True))  # queued, then a slow reply
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(generate, service)
        prompt_id = await running_id(fake)
        tasks.cancel_scope.cancel()
    with anyio.move_on_after(1.0):
        await fake.until(lambda: bool(fake.requests("POST", "/interrupt")))
    assert [r.json() for r in fake.requests("POST", "/interrupt")] == [{"prompt_id": prompt_id}]


async def test_400_node_errors_rejected_in_words(fake: FakeComfy, service: ComfyService) -> None:
    graph = txt2img()
    graph["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    with pytest.raises(PromptRejected) as info:
        await service.run(graph, wait_limit=3)
    text = str(info.value)
    assert text.startswith("ComfyUI refused the workflow: Prompt outputs failed validation")
    assert "node 4 (Load Checkpoint), input 'ckpt_name'" in text
    assert "'nope.safetensors' is not one of the available values" in text
    assert CHECKPOINTS[0] in text
    assert [p.node_id for p in info.value.problems] == ["4"]
    assert fake.started == []


TWO_OUTPUTS = {
    "description": "One image saved twice, once inverted.",
    "parameters": {"color": {"type": "int", "default": 255, "min": 0, "max": 16777215,
                             "bind": ["1.color"]}},
    "graph": {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": "keep/plain"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "_meta": {"title": "Save Inverted"},
              "inputs": {"images": ["3", 0], "filename_prefix": "drop/inverted"}},
    },
}


async def test_b19_200_with_node_errors_runs_the_rest(fake: FakeComfy, tmp_path: Path) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "two_outputs.json").write_text(json.dumps(TWO_OUTPUTS))
    fake.script.invalid = {"4": {"type": "exception_during_validation",
                                 "message": "Exception when validating node",
                                 "details": "'43069'", "extra_info": {}}}
    async with opened(fake, tmp_path, user_workflows_dir=workflows) as service:
        generation = await service.generate("two_outputs", {"color": 0x00FF00}, wait_limit=3)
    assert names(generation) == [("plain_00001_.png", "keep", "output")]
    assert_saved_as_served(fake, generation)
    [note] = [n for n in generation.notes if "dropped" in n]
    assert "node 4 (Save Inverted)" in note and "Exception when validating node" in note


# -- HTTP faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.bad_gateway(), "HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx"),
        (Fault.server_error(), "HTTP 500: 500 Internal Server Error Server got itself in"),
        (Fault.bad_json(), "Expected JSON"),
    ],
    ids=["502-html", "500-text", "bad-json"],
)
async def test_prompt_reply_faults_are_reported(
    fake: FakeComfy, service: ComfyService, fault: Fault, expected: str
) -> None:
    fake.fault("POST", "/prompt", fault)
    with pytest.raises(ComfyHTTPError) as info:
        await generate(service)
    assert expected in str(info.value) and "<" not in str(info.value)


async def test_upload_413_is_too_large(fake: FakeComfy, service: ComfyService) -> None:
    image = solid_png(8, 8, (1, 2, 3))
    fake.fault("POST", "/upload/image", Fault.too_large())
    with pytest.raises(UploadTooLarge, match="--max-upload-size"):
        await service.upload(image, "ref.png")
    reply = await service.upload(image, "ref.png")
    assert reply == {"name": "ref.png", "subfolder": "", "type": "input"}
    assert fake.files[("input", "", "ref.png")] == image


async def test_slow_history_replies_are_waited_for(
    fake: FakeComfy, service: ComfyService
) -> None:
    fake.fault("GET", "/history", Fault.slow(0.3), times=2)
    generation = await generate(service)
    assert_saved_as_served(fake, generation)


async def test_slow_prompt_reply_after_queueing(fake: FakeComfy, tmp_path: Path) -> None:
    fake.fault("POST", "/prompt", Fault.slow(1.0, after=True))
    async with opened(fake, tmp_path, http_timeout=0.5) as service:
        try:
            generation = await generate(service)
        except ComfyError as exc:
            assert fake.started and fake.started[0] in str(exc)
            return
    assert_saved_as_served(fake, generation)
