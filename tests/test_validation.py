"""Template parameters and graphs checked against node definitions (no network)."""

from __future__ import annotations

import pytest

from comfy_mcp.errors import GraphInvalid, InvalidParameter, MissingNodes
from comfy_mcp.validation import check_graph, resolve
from comfy_mcp.workflows import TemplateLibrary

SEED = ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}]
SIZE = ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}]
INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL"], "seed": SEED, "steps": ["INT", {"default": 20, "min": 1,
                                                               "max": 10000}],
        "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}],
        "sampler_name": [["euler", "euler_ancestral", "dpmpp_2m"]],
        "scheduler": [["normal", "karras"]],
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
        "latent_image": ["LATENT"], "denoise": ["FLOAT", {"default": 1.0, "min": 0, "max": 1}],
    }}, "output_node": False},
    "CheckpointLoaderSimple": {"input": {"required": {
        "ckpt_name": [["sd15.safetensors", "SDXL\\cinematic_v10.safetensors"], {}]}}},
    "EmptyLatentImage": {"input": {"required": {
        "width": SIZE, "height": SIZE, "batch_size": ["INT", {"min": 1, "max": 4096}]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}],
                                              "clip": ["CLIP"]}}},
    "VAEDecode": {"input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"],
                                         "filename_prefix": ["STRING", {}]}},
                  "output_node": True},
}


@pytest.fixture
def txt2img():
    return TemplateLibrary().get("txt2img")


def test_defaults_and_random_seed(txt2img) -> None:
    resolved = resolve(txt2img, {"prompt": "a fox"}, INFO)
    values = resolved.values
    assert values["checkpoint"] == "sd15.safetensors"  # first listed
    assert values["sampler"] == "euler" and values["width"] == 512
    assert 0 <= values["seed"] <= 2**53 - 1
    check_graph(txt2img.fill(values), INFO)


def test_explicit_large_seed_kept(txt2img) -> None:
    values = resolve(txt2img, {"prompt": "x", "seed": 2**64 - 1}, INFO).values
    assert values["seed"] == 2**64 - 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seed": 1.5}, "Parameter 'seed': expected a whole number, got 1.5"),
        ({"seed": 2**64}, "Parameter 'seed': 18446744073709551616 is out of range; use 0 to "
                          "18446744073709551615"),
        ({"width": 20000}, "Parameter 'width': 20000 is out of range; use 64 to 4096"),
        ({"width": 0}, "Parameter 'width': 0 is out of range; use 64 to 4096"),
        ({"cfg": "high"}, "Parameter 'cfg': expected a number, got 'high'"),
        ({"sampler": "eulr"}, "Parameter 'sampler': 'eulr' is not available. Did you mean "
                              "'euler'? Available: euler, euler_ancestral, dpmpp_2m"),
        ({"checkpoint": "cinematic_v10.safetensors"},
         "Did you mean 'SDXL\\\\cinematic_v10.safetensors'?"),
        ({"colour": "red"}, "Parameter 'colour': template 'txt2img' has no such parameter"),
    ],
)
def test_bad_parameters_refused(txt2img, params, message) -> None:
    with pytest.raises(InvalidParameter) as info:
        resolve(txt2img, {"prompt": "x", **params}, INFO)
    assert message in str(info.value)


def test_size_rounded_to_step_with_note(txt2img) -> None:
    resolved = resolve(txt2img, {"prompt": "x", "width": 1001, "height": 777}, INFO)
    assert (resolved.values["width"], resolved.values["height"]) == (1000, 776)
    assert resolved.notes == ["width 1001 is not a multiple of 8; used 1000",
                              "height 777 is not a multiple of 8; used 776"]


def test_no_checkpoints_installed(txt2img) -> None:
    info = dict(INFO, CheckpointLoaderSimple={"input": {"required": {"ckpt_name": [[]]}}})
    with pytest.raises(InvalidParameter, match="this ComfyUI has no checkpoints installed"):
        resolve(txt2img, {"prompt": "x"}, info)


def test_missing_node_classes_all_named(txt2img) -> None:
    graph = txt2img.fill({"prompt": "x"})
    graph["20"] = {"class_type": "VHS_VideoCombine", "inputs": {}}
    graph["21"] = {"class_type": "IPAdapterApply", "inputs": {}}
    with pytest.raises(MissingNodes) as info:
        check_graph(graph, INFO)
    assert "IPAdapterApply, VHS_VideoCombine" in str(info.value)
    assert "custom node" in str(info.value)


def test_graph_problems_listed(txt2img) -> None:
    values = resolve(txt2img, {"prompt": "x"}, INFO).values
    graph = txt2img.fill(values)
    graph["3"]["inputs"]["steps"] = 0
    del graph["9"]
    with pytest.raises(GraphInvalid) as info:
        check_graph(graph, INFO)
    text = str(info.value)
    assert "node 3 (KSampler), input 'steps': 0 is below the minimum 1" in text
    assert "no output node" in text
