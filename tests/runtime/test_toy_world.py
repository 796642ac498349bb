"""The toy world: the pipeline runs end to end, and the committed models really personalise."""

from __future__ import annotations

import pytest
import torch

from nested_attention.nested_core.attention import NestedSubject, TokenPositions
from nested_attention.nested_core.checkpoint import load_adapter_checkpoint
from nested_attention.nested_core.layers import LayerKey
from nested_attention.nodes.contract import LayerSubjects
from toy_world import WEIGHTS

COMMITTED = (WEIGHTS / "adapter_nested.safetensors").is_file()


def test_the_pipeline_runs_end_to_end_on_a_tiny_budget(pack, tmp_path):
    from toy_world.__main__ import QUICK
    from toy_world.diagnose import diagnose
    from toy_world.evaluate import load_kit
    from toy_world.pipeline import run_pipeline
    from toy_world.world import split_identities

    report = run_pipeline(QUICK, tmp_path / "weights", tmp_path / "results", seed=0, log=lambda message: None)
    for name in ("vae", "unet", "reader", "adapter_nested", "adapter_decoupled", "adapter_single-token"):
        assert (tmp_path / "weights" / f"{name}.safetensors").is_file(), name
    for name in ("results.md", "single_subject.png", "two_subjects.png", "tradeoff.png"):
        assert (tmp_path / "results" / name).is_file(), name
    weights = tmp_path / "weights"
    kit = load_kit(weights, {"nested": weights / "adapter_nested.safetensors"})
    found = diagnose(kit, *split_identities(), tmp_path / "results", log=lambda message: None, count=2)
    assert 0.0 < found["word_attention"]["creature_cells"] < 1.0
    assert (tmp_path / "results" / "diagnostics.md").is_file()
    methods = {"nested", "decoupled", "single-token"}
    assert set(report["two_subjects"]) == {"none"} | methods | {f"{m} + masks" for m in methods}


@pytest.mark.skipif(not COMMITTED, reason="the toy world's trained models are not in toy_world/weights")
def test_committed_models_load_with_comfyuis_classes(pack):
    import comfy.supported_models
    import comfy.taesd.taesd

    from toy_world.models import load_toy

    model, clip, vae = load_toy()
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    checkpoint = load_adapter_checkpoint(WEIGHTS / "adapter_nested.safetensors")
    assert checkpoint.config.class_word == "creature"


@pytest.mark.skipif(not COMMITTED, reason="the toy world's trained models are not in toy_world/weights")
def test_the_nested_adapter_raises_identity_on_held_out_creatures_and_keeps_the_background(pack):
    from toy_world.evaluate import load_kit, single_subject_scores
    from toy_world.world import split_identities

    kit = load_kit(WEIGHTS, {"nested": WEIGHTS / "adapter_nested.safetensors"})
    _, held_out = split_identities()
    # 40 held-out creatures, one scene each (about a minute). On the committed models this gives
    # identity 0.283 vs 0.167 and palette 0.500 vs 0.200 (seed 123); the margins below are under
    # half of that, for other CPUs' rounding. Shape is not transferred in the toy world (README).
    scores = single_subject_scores(
        kit, held_out[:40], 1, seed=123, methods=("none", "nested"), log=lambda message: None
    )["scores"]
    none, nested = scores[("none", 0.0)], scores[("nested", 1.0)]
    assert nested["identity"] > none["identity"] + 0.04, (none, nested)
    assert nested["palette"] > none["palette"] + 0.1, (none, nested)
    assert nested["background"] >= none["background"] - 0.1, (none, nested)


def test_the_baselines_compute_their_formulas(pack):
    """decoupled: out = plain + w·m·softmax(q K~ᵀ/√D) V~ on the rows with the word; single-token: the
    word's value becomes V + w·m·(mean V~ − V). Both against float64 references."""
    from reference_math import nested_attention_reference, plain_attention_reference

    from toy_world.baselines import PATCH_CLASSES as classes

    gen = torch.Generator().manual_seed(5)
    q, k, v = (
        torch.randn(2, 5, 8, generator=gen),
        torch.randn(2, 4, 8, generator=gen),
        torch.randn(2, 4, 8, generator=gen),
    )
    keys, values = torch.randn(1, 3, 8, generator=gen), torch.randn(1, 3, 8, generator=gen)
    mask = torch.rand(1, 5, generator=gen)
    subject = NestedSubject(keys, values, TokenPositions.from_lists([[1], []]), 0.7, mask)
    plain = plain_attention_reference(q, k, v, 2)
    layer = LayerKey("input", 4, 0)

    decoupled = classes["decoupled"](layer).combine(q, k, v, 2, LayerSubjects((0,), (subject,)), plain.float())
    v_star = nested_attention_reference(
        q[:1], v[:1, :1], v[:1, :1], 2, [dict(keys=keys, values=values, positions=[[0]])]
    )
    expected = plain.clone()
    expected[0] += 0.7 * mask[0, :, None].double() * v_star[0]
    torch.testing.assert_close(decoupled.double(), expected, rtol=1e-5, atol=1e-5)

    single = classes["single-token"](layer).combine(q, k, v, 2, LayerSubjects((0,), (subject,)), plain.float())
    pooled = dict(keys=torch.zeros_like(keys), values=values, positions=[[1], []], weight=0.7, mask=mask)
    torch.testing.assert_close(single.double(), nested_attention_reference(q, k, v, 2, [pooled]), rtol=1e-5, atol=1e-5)
