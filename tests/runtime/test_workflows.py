"""The example workflows: consistent files, real node types, model files the front end can offer to
download (agreeing with the README's model table), and each one runs on the tiny models."""

from __future__ import annotations

import json

import pytest
from graph import run_prompt

from nested_dev.comfy_env import PACK_ROOT
from nested_dev.model_sources import BY_NAME, LOADERS, MODELS, NESTED_RELEASE, parse_table, readme_table
from nested_dev.workflows import check_workflow, ui_to_api

FOLDER = PACK_ROOT / "workflows"
NAMES = sorted(p.name for p in FOLDER.glob("*.json"))


def test_the_expected_workflows_ship():
    assert NAMES == sorted(
        [
            "one_subject_sdxl.json",
            "two_subjects_person_and_dog.json",
            "two_people_same_word.json",
            "subject_with_region_mask.json",
            "ip_adapter_plus_as_nested_adapter.json",
            "attention_maps.json",
        ]
    )


@pytest.mark.parametrize("name", NAMES)
def test_workflow_file_is_consistent_and_current(pack, name):
    from nested_dev.make_workflows import CLIP_VISION, SDXL, WORKFLOWS

    workflow = json.loads((FOLDER / name).read_text())
    assert check_workflow(workflow) == []
    assert workflow == json.loads(json.dumps(WORKFLOWS[name]())), "regenerate with: python -m nested_dev.make_workflows"
    types = {node["type"] for node in workflow["nodes"]}
    assert "Note" in types and "ApplyNestedAttention" in types and "NestedTextEncode" in types
    values = {v for node in workflow["nodes"] for v in node["widgets_values"] if isinstance(v, str)}
    assert SDXL in values and CLIP_VISION in values


def test_check_workflow_finds_broken_files(pack):
    workflow = json.loads((FOLDER / "one_subject_sdxl.json").read_text())
    workflow["links"][0][3] = 999
    workflow["nodes"][0]["widgets_values"].append("extra")
    workflow["nodes"][1]["type"] = "NoSuchNode"
    problems = "\n".join(check_workflow(workflow))
    assert "joins a missing node" in problems and "widget values, expected" in problems and "not installed" in problems


def test_check_workflow_finds_model_declarations_the_front_end_would_drop(pack):
    workflow = json.loads((FOLDER / "one_subject_sdxl.json").read_text())
    checkpoint = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")
    checkpoint["widgets_values"] = ["another_checkpoint.safetensors"]  # the declared file is no longer chosen
    vision = next(n for n in workflow["nodes"] if n["type"] == "CLIPVisionLoader")
    del vision["properties"]["models"][0]["url"]  # the workflow schema needs a URL
    problems = "\n".join(check_workflow(workflow))
    assert "declares sd_xl_base_1.0.safetensors, which none of its widgets names" in problems
    assert "needs exactly name, url and directory" in problems


@pytest.mark.parametrize("name", NAMES)
def test_workflow_declares_every_model_file_with_a_public_url(name):
    """Each loader's file is one of nested_dev.model_sources; a file with a URL is declared on its
    loader (properties.models, read by the missing-models dialog) in its folder, one without is
    explained in the workflow's note instead of guessing a URL."""
    workflow = json.loads((FOLDER / name).read_text())
    note = "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note")
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    assert {n["type"] for n in loaders} >= {"CheckpointLoaderSimple", "CLIPVisionLoader", "LoadNestedAdapter"}
    for node in loaders:
        model = BY_NAME[node["widgets_values"][0]]
        assert model.folder == LOADERS[node["type"]], f"{model.name} is not a {node['type']} file"
        declared = node["properties"].get("models")
        if model.url:
            assert declared == [{"name": model.name, "url": model.url, "directory": model.folder}]
        else:
            assert declared is None, f"{model.name} has no known URL; it must not be declared"
            assert f"{model.name} -> models/{model.folder}" in note and NESTED_RELEASE in note
            assert "No download link" in note and "could not be checked" in note
    assert "models" not in workflow, "declared per loader, so a file is asked for only while a loader names it"


def test_model_sources_are_direct_downloads_the_dialog_accepts():
    for model in MODELS:
        assert model.name.endswith(".safetensors")
        if model.url:
            assert model.url.startswith("https://huggingface.co/") and "/resolve/main/" in model.url
            # The desktop app saves the download under the declared name; a browser under the URL's.
            renamed = model.url.rsplit("/", 1)[1] != model.name
            assert renamed == ("rename it" in model.how), model.name


def test_readme_model_table_lists_exactly_the_model_sources():
    """The README's "Models: where each file goes" table is nested_dev.model_sources.readme_table()
    (python -m nested_dev.model_sources prints it): same files, folders and links, in that order."""
    readme = (PACK_ROOT / "README.md").read_text()
    assert parse_table(readme) == [(m.name, m.folder, m.url) for m in MODELS]
    assert readme_table() in readme


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_on_the_tiny_models(pack, comfy_base, name):
    from nested_dev.demo import stand_in_ui

    workflow, _ = stand_in_ui(json.loads((FOLDER / name).read_text()), comfy_base, steps=2)
    prompt = ui_to_api(workflow)
    before = set((comfy_base / "output").glob("*.png"))
    run_prompt(prompt)
    assert set((comfy_base / "output").glob("*.png")) - before, "the workflow saved no image"
