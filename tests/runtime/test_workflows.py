"""The example workflows: consistent files, real node types, and each one runs on the tiny models."""

from __future__ import annotations

import json

import pytest
from graph import run_prompt

from nested_dev.comfy_env import PACK_ROOT
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


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_on_the_tiny_models(pack, comfy_base, name):
    from nested_dev.demo import stand_in_ui

    workflow, _ = stand_in_ui(json.loads((FOLDER / name).read_text()), comfy_base, steps=2)
    prompt = ui_to_api(workflow)
    before = set((comfy_base / "output").glob("*.png"))
    run_prompt(prompt)
    assert set((comfy_base / "output").glob("*.png")) - before, "the workflow saved no image"
