"""Whole graphs through ComfyUI's PromptExecutor, each attn2 call checked against an independent
float64 computation of Eq. 1 and Eq. 3 (see nested_expectations.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
from graph import Graph, run_prompt
from nested_expectations import ExpectedPrompt, ExpectedSubject, check_calls, token_ids

LONG_PROMPT = (
    "a photo of a person standing in a sunny meadow full of flowers, wearing a red coat and a wide hat, "
    "with mountains, a lake, a small wooden cabin, pine trees, clouds, birds, a winding path, a stone "
    "bridge, a dog running, sheep grazing, a windmill, a rainbow and a hot air balloon far away in the "
    "evening light, highly detailed, sharp focus, award winning photograph"
)


@dataclass
class Bind:
    adapter: str
    subject: str
    token: str = "person"
    occurrence: int = 0
    weight: float = 1.0
    start_at: float = 0.0
    end_at: float = 1.0
    mask: bool = False


@dataclass
class Case:
    kind: str = "sd15"
    positive: str = "a photo of a person at the beach"
    negative: str = "blurry, low quality"
    binds: list = field(default_factory=list)
    cfg: float = 5.0
    batch: int = 1
    steps: int = 2
    negative_plain: bool = False  # negative from the core CLIPTextEncode
    combine_with: Optional[str] = None  # a second positive, joined by ConditioningCombine
    foreign: Optional[str] = None  # "before": another pack's patch under ours; "add": add()-ed after
    width: int = 64
    height: int = 64


def build(case: Case, label: str) -> Graph:
    g = Graph()
    tiny = g.add("NestedDevTinyCheckpoint", kind=case.kind, seed=0)
    positive = g.add("NestedTextEncode", clip=tiny[1], text=case.positive)
    g.add("NestedDevCapture", value=positive[0], label=f"{label}:positive")
    if case.combine_with:
        second = g.add("NestedTextEncode", clip=tiny[1], text=case.combine_with)
        g.add("NestedDevCapture", value=second[0], label=f"{label}:second")
        positive = g.add("ConditioningCombine", conditioning_1=positive[0], conditioning_2=second[0])
    negative = g.add("CLIPTextEncode" if case.negative_plain else "NestedTextEncode", clip=tiny[1], text=case.negative)
    g.add("NestedDevCapture", value=negative[0], label=f"{label}:negative")
    g.add("NestedDevCapture", value=tiny[1], label=f"{label}:clip")
    model = tiny[0]
    if case.foreign == "before":
        model = g.add("NestedDevForeignPatch", model=model, strength=0.5, mode="replace")[0]
    for bind in case.binds:
        inputs = dict(
            model=model,
            adapter=g.add("LoadNestedAdapter", adapter_name=bind.adapter)[0],
            subject=g.add("LoadNestedSubject", subject_name=bind.subject)[0],
            token=bind.token,
            weight=bind.weight,
            start_at=bind.start_at,
            end_at=bind.end_at,
            occurrence=bind.occurrence,
        )
        if bind.mask:
            inputs["attn_mask"] = left_half_mask(g)
        model = g.add("ApplyNestedAttention", **inputs)[0]
    if case.foreign == "add":
        model = g.add("NestedDevForeignPatch", model=model, strength=0.25, mode="add")[0]
    model = g.add("NestedDevRecordAttn2", model=model, label=label)[0]
    g.add("NestedDevCapture", value=model, label=f"{label}:model")
    latent = g.add("EmptyLatentImage", width=case.width, height=case.height, batch_size=case.batch)
    sampled = g.sample(model, positive[0], negative[0], latent[0], seed=1, steps=case.steps, cfg=case.cfg)
    g.add("NestedDevCapture", value=sampled[0], label=f"{label}:latent")
    return g


def left_half_mask(g: Graph):
    empty = g.add("SolidMask", value=0.0, width=64, height=64)
    left = g.add("SolidMask", value=1.0, width=32, height=64)
    return g.add("MaskComposite", destination=empty[0], source=left[0], x=0, y=0, operation="add")[0]


def expected_masks(case: Case) -> Optional[torch.Tensor]:
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    return mask


def run_and_check(case: Case, assets, label: str) -> dict[str, int]:
    from nested_dev.dev_nodes import CAPTURED, RECORDS

    run_prompt(build(case, label).prompt)
    model, clip = CAPTURED[f"{label}:model"], CAPTURED[f"{label}:clip"]
    prompts = [
        ExpectedPrompt(CAPTURED[f"{label}:positive"][0][0], token_ids(clip, case.positive)),
        ExpectedPrompt(
            CAPTURED[f"{label}:negative"][0][0], None if case.negative_plain else token_ids(clip, case.negative)
        ),
    ]
    if case.combine_with:
        prompts.append(ExpectedPrompt(CAPTURED[f"{label}:second"][0][0], token_ids(clip, case.combine_with)))
    subjects = [
        ExpectedSubject(
            str(assets / "nested_adapters" / b.adapter),
            str(assets / "nested_subjects" / b.subject),
            b.token,
            b.occurrence,
            b.weight,
            b.start_at,
            b.end_at,
            expected_masks(case) if b.mask else None,
        )
        for b in case.binds
    ]
    from nested_dev.comfy_env import load_pack

    sites = load_pack().nodes.model_layers.attn2_sites(model)
    counts = check_calls(
        RECORDS[label],
        model,
        clip,
        prompts,
        subjects,
        sites,
        foreign_strength=0.5 if case.foreign == "before" else (0.0 if case.foreign == "add" else None),
        foreign_add_strength=0.25 if case.foreign == "add" else 0.0,
    )
    assert torch.isfinite(CAPTURED[f"{label}:latent"]["samples"]).all()
    return counts


def person(kind="sd15", number=1, **kw) -> Bind:
    return Bind(f"{kind}_person.safetensors", f"{kind}_person_s{number}.safetensors", **kw)


def dog(kind="sd15", **kw) -> Bind:
    return Bind(f"{kind}_dog.safetensors", f"{kind}_dog_s1.safetensors", token="dog", **kw)


CASES = {
    "one subject": lambda k: Case(kind=k, binds=[person(k)]),
    "two subjects, different words and adapters": lambda k: Case(
        kind=k, positive="a person walking a dog in the park", binds=[person(k), dog(k, weight=0.8)]
    ),
    "two people, same class word": lambda k: Case(
        kind=k,
        positive="a person talking to another person in a cafe",
        binds=[person(k, 1, occurrence=1), person(k, 2, occurrence=2)],
    ),
    "cfg 1 (no negative pass)": lambda k: Case(kind=k, cfg=1.0, binds=[person(k)]),
    "batch of 2": lambda k: Case(kind=k, batch=2, binds=[person(k)]),
    "100-token prompt": lambda k: Case(kind=k, positive=LONG_PROMPT, binds=[person(k)]),
    "long negative (tiled positive)": lambda k: Case(kind=k, negative=LONG_PROMPT + ", a person", binds=[person(k)]),
    "weighted prompt syntax": lambda k: Case(
        kind=k, positive="a photo of a (person:1.3) on a (red:0.8) bike", binds=[person(k)]
    ),
    "ConditioningCombine": lambda k: Case(kind=k, combine_with="a person in the snow, winter", binds=[person(k)]),
    "plain CLIPTextEncode negative": lambda k: Case(kind=k, negative_plain=True, binds=[person(k)]),
    "foreign patch underneath": lambda k: Case(kind=k, foreign="before", binds=[person(k)]),
    "foreign add() on top": lambda k: Case(kind=k, foreign="add", binds=[person(k)]),
    "start/end gating": lambda k: Case(kind=k, steps=4, binds=[person(k, start_at=0.3, end_at=0.7)]),
    "region mask": lambda k: Case(kind=k, binds=[person(k, mask=True)]),
    "region mask, wide image": lambda k: Case(kind=k, width=96, height=64, binds=[person(k, mask=True)]),
    "IP-Adapter-Plus file as the adapter": lambda k: Case(
        kind=k, binds=[Bind(f"{k}_ipa_plus.safetensors", f"{k}_ipa_plus_s1.safetensors")]
    ),
}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("name", list(CASES))
def test_graph_matches_the_float64_account(assets, kind, name):
    case = CASES[name](kind)
    counts = run_and_check(case, assets, f"{kind}:{name}")
    assert counts["with_subjects"] > 0, counts
    if name == "start/end gating":
        assert counts["plain"] > 0, counts
