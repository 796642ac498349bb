"""The attn2 patch's cost per layer call in a real sampling run, counted: kernels beyond the plain
attention and host synchronisations (nested_dev.kernel_count), on the patch ComfyUI calls."""

from __future__ import annotations

import comfy.sample
import pytest
import torch

from nested_attention.nested_core.subject import load_subject
from nested_attention.nodes import patch as patch_module
from nested_attention.nodes.adapter_runtime import load_adapter
from nested_attention.nodes.apply_subject import apply_subject
from nested_attention.nodes.patch import NestedAttn2Patch
from nested_attention.nodes.text_encode import encode_prompt
from nested_dev import tiny_models
from nested_dev.kernel_count import KernelCount


def counted_calls(model, clip, text, monkeypatch, steps=3) -> list[dict]:
    """Sample, and count for every attn2 patch call what it does beyond the plain attention."""
    calls: list[dict] = []
    counters: list[KernelCount] = []
    plain_attention = patch_module.optimized_attention
    patch_call = NestedAttn2Patch.__call__

    def uncounted_attention(*args, **kwargs):
        with counters[-1].pause():
            return plain_attention(*args, **kwargs)

    def counted_call(self, q, k, v, extra_options):
        sigma = float(extra_options["sigmas"].reshape(-1)[0])  # read here, outside the count
        with KernelCount() as counter:
            counters.append(counter)
            out = patch_call(self, q, k, v, extra_options)
        calls.append(
            dict(sigma=sigma, layer=str(self.layer), kernels=counter.total, ops=dict(counter.ops), syncs=counter.syncs)
        )
        return out

    monkeypatch.setattr(patch_module, "optimized_attention", uncounted_attention)
    monkeypatch.setattr(NestedAttn2Patch, "__call__", counted_call)
    latent = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        comfy.sample.sample(
            model,
            comfy.sample.prepare_noise(latent, 0),
            steps,
            5.0,
            "euler",
            "normal",
            encode_prompt(clip, text),
            encode_prompt(clip, "blurry"),
            latent,
            seed=0,
        )
    monkeypatch.undo()
    return calls


def after_the_first_step(calls: list[dict]) -> list[dict]:
    """Calls of every evaluation but the first (which builds the run's caches, and may sync)."""
    first = calls[0]["sigma"]
    later = [c for c in calls if c["sigma"] != first]
    assert later, "the run must have more than one evaluation"
    return later


def subjects(pack, assets, kind, words, **options):
    model = tiny_models.build_unet(kind, seed=0)
    for number, word in enumerate(words, start=1):
        adapter = load_adapter(str(assets / "nested_adapters" / f"{kind}_{word}.safetensors"))
        subject = load_subject(str(assets / "nested_subjects" / f"{kind}_{word}_s{number}.safetensors"))
        model = apply_subject(model, adapter, subject, word, **options)
    return model


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_one_subject_costs_at_most_10_kernels_per_layer_call_and_no_host_sync(pack, assets, kind, monkeypatch):
    model = subjects(pack, assets, kind, ["person"])
    calls = counted_calls(model, tiny_models.build_clip(kind, 0), "a photo of a person on a beach", monkeypatch)
    later = after_the_first_step(calls)
    assert all(c["syncs"] == [] for c in later), [c for c in later if c["syncs"]][:2]
    assert max(c["kernels"] for c in later) <= 10, max(later, key=lambda c: c["kernels"])
    assert min(c["kernels"] for c in later) >= 4, "the subject must act in every layer call"


def test_each_further_subject_costs_at_most_6_more(pack, assets, monkeypatch):
    one = after_the_first_step(
        counted_calls(
            subjects(pack, assets, "sdxl", ["person"]),
            tiny_models.build_clip("sdxl", 0),
            "a person and a dog",
            monkeypatch,
        )
    )
    two = after_the_first_step(
        counted_calls(
            subjects(pack, assets, "sdxl", ["person", "dog"]),
            tiny_models.build_clip("sdxl", 0),
            "a person and a dog",
            monkeypatch,
        )
    )
    assert all(c["syncs"] == [] for c in two)
    assert max(c["kernels"] for c in two) <= 10 + 6, max(two, key=lambda c: c["kernels"])
    assert min(c["kernels"] for c in two) > max(c["kernels"] for c in one), "the second subject must act too"


def test_a_region_mask_and_a_repeated_word_stay_within_budget(pack, assets, monkeypatch):
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    model = subjects(pack, assets, "sdxl", ["person"], attn_mask=mask)
    calls = counted_calls(model, tiny_models.build_clip("sdxl", 0), "a person next to a person", monkeypatch)
    later = after_the_first_step(calls)
    assert all(c["syncs"] == [] for c in later)
    assert max(c["kernels"] for c in later) <= 10, max(later, key=lambda c: c["kernels"])


def test_the_counter_sees_host_syncs_and_kernels():
    with KernelCount() as counter:
        x = torch.ones(4)
        y = (x * 2).view(2, 2).transpose(0, 1)
        float(y.sum())
        torch.nonzero(x)
    assert "_local_scalar_dense" in counter.syncs and "nonzero" in counter.syncs
    assert counter.ops["mul"] == 1 and "view" not in counter.ops and "transpose" not in counter.ops
