"""Parameters found in graphs, and UI-format workflows converted to API format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_mcp.convert import is_ui_workflow, ui_to_api
from comfy_mcp.errors import InvalidParameter, MissingNodes, WorkflowError
from comfy_mcp.inference import infer_parameters
from comfy_mcp.service import apply_overrides
from comfy_mcp.workflows import TemplateLibrary, check_api_graph, load_template

DATA = Path(__file__).parent / "data"


def graph_of(name: str) -> dict:
    return json.loads(json.dumps(TemplateLibrary().get(name).graph))


def bindings(graph: dict) -> dict[str, list[str]]:
    return {n: [str(b) for b in p.bindings] for n, p in infer_parameters(graph).items()}


def test_prompts_follow_sampler_links_not_text_order() -> None:
    graph = graph_of("txt2img")
    # Swap the titles and ids' order: the negative encoder now comes first in the file.
    graph["6"]["_meta"]["title"], graph["7"]["_meta"]["title"] = "Negative", "Positive"
    found = bindings(graph)
    assert found["prompt"] == ["6.text"] and found["negative_prompt"] == ["7.text"]
    assert found["seed"] == ["3.seed"] and found["checkpoint"] == ["4.ckpt_name"]
    assert found["width"] == ["5.width"] and found["batch_size"] == ["5.batch_size"]
    assert found["sampler"] == ["3.sampler_name"] and found["denoise"] == ["3.denoise"]


def test_prompt_through_conditioning_nodes_and_every_seed() -> None:
    graph = graph_of("txt2img")
    graph["20"] = {"class_type": "ConditioningCombine",
                   "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["21", 0]}}
    graph["21"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "b", "clip": ["4", 1]}}
    graph["3"]["inputs"]["positive"] = ["20", 0]
    graph["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    found = bindings(graph)
    assert sorted(found["prompt"]) == ["21.text", "6.text"]
    assert found["seed"] == ["3.seed", "30.noise_seed"]


def test_image_and_size_sources() -> None:
    found = bindings(graph_of("img2img"))
    assert found["image"] == ["10.image"] and "width" not in found


def test_ui_to_api_matches_the_hand_written_graph() -> None:
    ui = json.loads((DATA / "ui_txt2img.json").read_text())
    assert is_ui_workflow(ui)
    info = object_info_for_ui()
    graph = ui_to_api(ui, info)
    assert set(graph) == {"3", "4", "5", "6", "7", "8", "9"}  # no Note, no Reroute
    assert graph["3"]["inputs"] == {
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "seed": 42, "steps": 1, "cfg": 7.0,
        "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert graph["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "ui/converted"}
    assert graph["6"]["_meta"] == {"title": "Positive"}
    check_api_graph(graph)


def test_ui_bypassed_node_and_unknown_class_refused() -> None:
    ui = json.loads((DATA / "ui_txt2img.json").read_text())
    ui["nodes"][1]["mode"] = 4
    with pytest.raises(WorkflowError, match=r"node 6 \(CLIPTextEncode\) is bypassed"):
        ui_to_api(ui, object_info_for_ui())
    ui["nodes"][1]["type"] = "Mystery"
    with pytest.raises(MissingNodes, match="Mystery"):
        ui_to_api(ui, object_info_for_ui())


def test_ui_format_passed_as_api_is_explained() -> None:
    ui = json.loads((DATA / "ui_txt2img.json").read_text())
    with pytest.raises(WorkflowError, match="UI format"):
        check_api_graph(ui)
    with pytest.raises(WorkflowError, match=r"wrapped in \{'prompt'"):
        check_api_graph({"prompt": graph_of("txt2img")})
    with pytest.raises(WorkflowError, match="must be strings"):
        check_api_graph({"1": {"class_type": "X", "inputs": {"a": [1, 0]}}})


def test_overrides_name_node_and_input() -> None:
    graph = graph_of("txt2img")
    apply_overrides(graph, {"3.steps": 4})
    assert graph["3"]["inputs"]["steps"] == 4
    with pytest.raises(InvalidParameter, match="its nodes are: 3 \\(KSampler\\)"):
        apply_overrides(graph, {"99.steps": 4})


def test_binding_by_title(tmp_path: Path) -> None:
    doc = {"graph": graph_of("txt2img"),
           "parameters": {"prompt": {"bind": [{"title": "Positive Prompt", "input": "text"}]}}}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    template = load_template(tmp_path / "t.json")
    assert [str(b) for b in template.parameters["prompt"].bindings] == ["6.text"]
    doc["parameters"]["prompt"]["bind"] = [{"title": "Nope", "input": "text"}]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(WorkflowError, match="no node titled 'Nope'"):
        load_template(tmp_path / "t.json")


def test_user_templates_reread_when_changed(tmp_path: Path) -> None:
    library = TemplateLibrary(tmp_path)
    doc = {"description": "one", "graph": graph_of("upscale"), "parameters": {}}
    (tmp_path / "mine.json").write_text(json.dumps(doc))
    assert library.get("mine").description == "one"
    doc["description"] = "two, longer"
    (tmp_path / "mine.json").write_text(json.dumps(doc))
    assert library.get("mine").description == "two, longer"
    assert "mine" in library.names() and "txt2img" in library.names()


def object_info_for_ui() -> dict:
    seed = ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}]
    return {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a"]]}}},
        "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}],
                                                  "clip": ["CLIP"]}}},
        "EmptyLatentImage": {"input": {"required": {"width": ["INT", {}],
                                                    "height": ["INT", {}],
                                                    "batch_size": ["INT", {}]}}},
        "KSampler": {"input": {"required": {
            "model": ["MODEL"], "seed": seed, "steps": ["INT", {}], "cfg": ["FLOAT", {}],
            "sampler_name": [["euler"]], "scheduler": [["normal"]],
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"], "denoise": ["FLOAT", {}]}},
            "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name",
                                         "scheduler", "positive", "negative", "latent_image",
                                         "denoise"]}},
        "VAEDecode": {"input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}}},
        "SaveImage": {"input": {"required": {"images": ["IMAGE"],
                                             "filename_prefix": ["STRING", {}]}}},
    }
