"""Reading a job's end from history entries and WebSocket events (no network)."""

from __future__ import annotations

import pytest

from comfy_mcp.errors import JobFailed, JobInterrupted, NoOutputs, OutOfMemory
from comfy_mcp.jobs import JobWatch, parse_outputs, result_from_history

GRAPH = {"3": {"class_type": "KSampler", "inputs": {}},
         "9": {"class_type": "SaveImage", "inputs": {}}}


def watch() -> JobWatch:
    return JobWatch("P1", GRAPH)


def entry(status: str, messages: list, outputs: dict | None = None) -> dict:
    return {"outputs": outputs or {},
            "status": {"status_str": status, "completed": status == "success",
                       "messages": messages}}


OOM = ["execution_error", {
    "prompt_id": "P1", "node_id": "3", "node_type": "KSampler", "executed": ["4"],
    "exception_message": "Allocation on device \nThis error means you ran out of memory on "
                         "your GPU.\n\nTIPS: If the workflow worked before you might have "
                         "accidentally set the batch_size to a large number.",
    "exception_type": "torch.OutOfMemoryError", "traceback": ["  File ..."],
    "current_inputs": {}, "current_outputs": ["4"], "timestamp": 3}]


def test_out_of_memory_from_history() -> None:
    with pytest.raises(OutOfMemory) as info:
        result_from_history(watch(), entry("error", [OOM]))
    text = str(info.value)
    assert "in node 3 (KSampler): torch.OutOfMemoryError: Allocation on device" in text
    assert "lower resolution" in text and "batch_size" in text
    assert "File ..." not in text and "(prompt id P1)" in text


def test_other_failure_keeps_type_and_trims_message() -> None:
    error = ["execution_error", {"node_id": "3", "node_type": "KSampler",
                                 "exception_type": "RuntimeError",
                                 "exception_message": "mat1 and mat2 shapes cannot be "
                                                      "multiplied (77x2048 and 768x320)\n"}]
    partial = {"12": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}}
    with pytest.raises(JobFailed) as info:
        result_from_history(watch(), entry("error", [error], partial))
    assert not isinstance(info.value, OutOfMemory)
    assert str(info.value).endswith(
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (77x2048 and 768x320) "
        "(prompt id P1)")


def test_interrupted_is_not_failed() -> None:
    interrupted = ["execution_interrupted", {"prompt_id": "P1", "node_id": "3",
                                             "node_type": "KSampler", "executed": ["4"]}]
    with pytest.raises(JobInterrupted, match="interrupted at node 3"):
        result_from_history(watch(), entry("error", [interrupted]))


def test_empty_outputs() -> None:
    with pytest.raises(NoOutputs, match="returned no outputs: the workflow has no output"):
        result_from_history(watch(), entry("success", []))
    cached = ["execution_cached", {"nodes": ["3", "9"]}]
    result = result_from_history(watch(), entry("success", [cached]))  # B03 variant A
    assert result.cached and result.files == []


def test_every_media_kind_found() -> None:
    outputs = {
        "117": {"text": ["seed: 42"]},
        "9": {"gifs": [{"filename": "AnimateDiff_00001.mp4", "subfolder": "", "type": "output",
                        "format": "video/h264-mp4", "fullpath": "/srv/x.mp4"}]},
        "21": {"images": [{"filename": "clip_00001_.mp4", "subfolder": "video",
                           "type": "output"}], "animated": [True]},
        "30": {"audio": [{"filename": "ComfyUI_00001_.flac", "subfolder": "audio",
                          "type": "output"}]},
        "12": {"images": [{"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "",
                           "type": "temp"}]},
        "40": {"images": "not a list", "weird": [1, None]},
    }
    files, texts = parse_outputs(outputs)
    assert texts == ["seed: 42"]
    assert [(f.filename, f.media, f.temporary) for f in files] == [
        ("AnimateDiff_00001.mp4", "video", False),
        ("clip_00001_.mp4", "video", False),
        ("ComfyUI_00001_.flac", "audio", False),
        ("ComfyUI_temp_abcde_00001_.png", "image", True),
    ]


def test_progress_text_from_events() -> None:
    w = JobWatch("P1", {"3": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
                              "inputs": {}}, "9": {"class_type": "SaveImage", "inputs": {}}})
    assert w.describe() == "queued"
    w.deliver("execution_start", {"prompt_id": "P1"})
    w.deliver("executing", {"node": "3", "prompt_id": "P1"})
    w.deliver("progress", {"value": 5, "max": 20, "node": "3", "prompt_id": "P1"})
    assert w.describe() == "running Sampler (node 3), step 5/20"
    assert w.fraction() == pytest.approx(0.125)
    w.deliver("executing", {"node": None, "prompt_id": "P1"})
    assert w.done
