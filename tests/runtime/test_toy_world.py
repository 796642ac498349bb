"""The toy world: the pipeline runs end to end, its pieces compute what they claim, and the committed
models show the headline results (README "Proof in a toy world") with margins a broken patch fails."""

from __future__ import annotations

import pytest
import torch
from reference_math import nested_attention_reference, plain_attention_reference

from nested_attention.nested_core.attention import NestedSubject, TokenPositions
from nested_attention.nested_core.checkpoint import load_adapter_checkpoint
from nested_attention.nested_core.layers import LayerKey
from nested_attention.nodes.contract import LayerSubjects
from toy_world import WEIGHTS

COMMITTED = (WEIGHTS / "adapter_nested.safetensors").is_file() and (WEIGHTS / "text.safetensors").is_file()
committed = pytest.mark.skipif(not COMMITTED, reason="the toy world's trained models are not in toy_world/weights")


def test_the_pipeline_runs_end_to_end_on_a_tiny_budget(pack, tmp_path):
    from toy_world.__main__ import QUICK
    from toy_world.pipeline import run_pipeline

    report = run_pipeline(QUICK, tmp_path / "weights", tmp_path / "results", seed=0, log=lambda message: None)
    for name in ("vae", "unet", "text", "reader", "adapter_nested", "adapter_decoupled", "adapter_single-token"):
        assert (tmp_path / "weights" / f"{name}.safetensors").is_file(), name
    for name in (
        "results.md",
        "diagnostics.md",
        "single_subject.png",
        "two_classes.png",
        "same_class.png",
        "tradeoff.png",
    ):
        assert (tmp_path / "results" / name).is_file(), name
    methods = {"nested", "decoupled", "single-token"}
    assert set(report["two_classes"]) == {"none"} | methods
    assert set(report["same_class"]) == {"none"} | methods | {f"{m} + masks" for m in methods}
    assert {key.split("@")[0] for key in report["sweep"]} == methods | {"ipa-as-nested"}
    assert 0.0 < report["grounding"]["word_attention"]["all"]["object"][0] < 1.0


def test_the_text_encoders_training_forward_is_comfyuis_forward(pack):
    """train_base trains the text encoder through models.text_forward; it must compute what ComfyUI's
    CLIP computes when the nodes encode a prompt (and keep gradients)."""
    from toy_world.models import build_clip, text_forward, token_ids

    clip = build_clip()
    captions = [
        "blue background, at the top left a robot",
        "red background, on the left a flower and on the right a house",
        "",
    ]
    ids = torch.tensor([token_ids(clip, c) for c in captions])
    ours = text_forward(clip, ids)
    for row, caption in enumerate(captions):
        torch.testing.assert_close(ours[row : row + 1], clip.encode_from_tokens(clip.tokenize(caption)), rtol=0, atol=0)
    clip.cond_stage_model.requires_grad_(True)
    text_forward(clip, ids).sum().backward()
    assert clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


def test_the_grounding_loss_rewards_attention_on_the_object(pack):
    """train_base.GroundingLoss: lower when the word's attention sits on its object's cells."""
    from toy_world.train_base import GroundingLoss

    heads, dim, queries, context = 2, 8, 64, 77
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :4, :4] = 1.0  # the word's object: the top-left quarter
    loss = GroundingLoss()
    k = torch.zeros(1, context, heads * dim)
    k[0, 5] = 1.0  # the word's key
    cells = torch.arange(queries)
    top_left = ((cells // 8 < 4) & (cells % 8 < 4)).float()
    terms = []
    for where in (top_left, 1 - top_left):
        loss.set_batch(torch.tensor([[5, 0]]), torch.tensor([[True, False]]), masks)
        q = (where[:, None] * 20.0).expand(queries, heads * dim)[None]  # these queries look at the word
        loss(q, k, torch.randn(1, context, heads * dim), {"n_heads": heads})
        terms.append(float(loss.terms[0]))
    assert terms[0] < -0.5 < 0.5 < terms[1], terms


@committed
def test_committed_models_load_with_comfyuis_classes(pack):
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    from toy_world.models import load_toy

    model, clip, vae = load_toy()
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert isinstance(clip.cond_stage_model, comfy.sd1_clip.SD1ClipModel)
    checkpoint = load_adapter_checkpoint(WEIGHTS / "adapter_nested.safetensors")
    assert checkpoint.config.class_word == "creature/flower/house/robot"


def test_the_baselines_compute_their_formulas(pack):
    """decoupled: out = plain + w·m·softmax(q K~ᵀ/√D) V~ on the rows with the word; single-token: the
    word's value becomes V + w·m·(mean V~ − V). Both against float64 references."""
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


@pytest.fixture(scope="module")
def toolkit(pack):
    from toy_world.evaluate import load_kit

    return load_kit(WEIGHTS, {"nested": WEIGHTS / "adapter_nested.safetensors"})


@pytest.fixture(scope="module")
def report():
    import json

    from toy_world import RESULTS

    return json.loads((RESULTS / "results.json").read_text())


@committed
def test_the_committed_base_model_grounds_its_class_words(toolkit):
    """The property nested attention acts through: the word's attention lands on its object
    (README: 0.80 on the object, 6.3x the background, over 40 objects)."""
    from toy_world.diagnose import word_attention
    from toy_world.world import split_identities

    _, held_out = split_identities()
    found = word_attention(toolkit, held_out[:8], seed=5)
    assert found["all"]["object"][0] > 0.5 and found["all"]["ratio"] > 4.0, found["all"]
    assert found["first third"]["ratio"] > 3.0, found["first third"]


@committed
def test_nested_personalises_held_out_objects_as_reported(toolkit, report):
    """The README's main table, reproduced image for image (same references, scenes and seeds as
    the pipeline): the nested adapter draws the reference's palette (0.61 vs 0.10 without it), so
    its identity is well above no adapter's. A patch that does nothing, or binds the wrong
    subject, fails both."""
    from toy_world.__main__ import FULL
    from toy_world.evaluate import single_subject_scores
    from toy_world.world import split_identities

    _, held_out = split_identities()
    toolkit.steps = FULL["sample_steps"]
    scores = single_subject_scores(
        toolkit, held_out[: FULL["eval_identities"]], FULL["eval_prompts"], seed=7, methods=("none", "nested"),
        log=lambda message: None,
    )["scores"]  # fmt: skip
    none, nested = scores[("none", 0.0)], scores[("nested", 1.0)]
    assert nested["palette"][0] > none["palette"][0] + 0.3, (nested, none)
    assert nested["identity"][0] > none["identity"][0] + 0.05, (nested, none)
    published = report["single_subject"]["nested@1.0"]["identity"][0]
    assert nested["identity"][0] == pytest.approx(published, abs=0.03), (nested["identity"], published)


@committed
def test_two_subjects_of_two_classes_each_take_their_own_reference(toolkit):
    """No masks, "... on the left a robot and on the right a flower": each object carries more of
    its own reference than of the other's, and more than without an adapter (README table)."""
    from toy_world.__main__ import FULL
    from toy_world.evaluate import pairs_of, two_subject_scores
    from toy_world.world import split_identities

    _, held_out = split_identities()
    toolkit.steps = FULL["sample_steps"]
    pairs = pairs_of(held_out, FULL["pairs"], same_class=False, seed=9)
    variants = [("none", False), ("nested", False)]
    scores = two_subject_scores(toolkit, pairs, seed=10, variants=variants, log=lambda message: None)["scores"]
    none, nested = scores["none"], scores["nested"]
    assert nested["own_minus_other"][0] > 0.03, nested
    assert nested["own"][0] > none["own"][0] + 0.04, (nested, none)


def test_the_ip_adapter_workflow_starts_at_the_measured_weight(report):
    """The IP-Adapter-Plus example workflow's weight is the toy world's answer: the weight with the
    best identity whose prompt alignment stays within 0.02 of no adapter (README advice)."""
    from nested_dev.make_workflows import IPA_AS_NESTED_WEIGHT
    from toy_world.figures import best_weight

    weight, _ = best_weight(report["sweep"], "ipa-as-nested", report["single_subject"]["none@0.0"])
    assert IPA_AS_NESTED_WEIGHT == weight


@committed
def test_the_explanations_run_on_the_committed_base_model(pack, report):
    """python -m toy_world explain, on a tiny budget: every test runs through the real trainer and
    nodes and lands in explain.md (the committed numbers come from the full budget)."""
    from toy_world.__main__ import EXPLAIN_QUICK, QUICK
    from toy_world.evaluate import load_kit
    from toy_world.explain import explain, markdown
    from toy_world.world import split_identities

    settings = {**QUICK, **EXPLAIN_QUICK}
    kit = load_kit(WEIGHTS, {})
    kit.steps = settings["sample_steps"]
    train_ids, held_out = split_identities()
    found = explain(kit, WEIGHTS, train_ids, held_out, settings, 0, lambda message: None)
    assert set(found["recipe"]) == {"nested, 3x steps", "single-token, 3x steps", "nested, projections from the UNet"}
    assert set(found["fitted"]) == {"nested", "single-token"}
    assert found["fitted"]["nested"]["n"] == EXPLAIN_QUICK["fit_identities"] * EXPLAIN_QUICK["fit_prompts"]
    assert found["probe"]["per patch/palette"]["held_out"][0] > 0.5  # colours are plain in the features
    assert set(found["detail"]) == {"nested", "single-token", "nested_minus_single", "one_colour"}
    text = markdown(found, report)
    assert "Fitted to one object each" in text and "nested, 3x steps" in text and "no word for" in text


def test_the_per_cell_score_of_arbitrary_detail(pack):
    """explain's test 4 scores the object's cells at the caption's place: the intended image scores
    1, the same object with its two colours swapped 0, the object drawn elsewhere at most chance."""
    import random

    from toy_world.explain import cell_hits, detail_mask, detailed_image
    from toy_world.world import Scene, split_identities

    _, held_out = split_identities()
    rng = random.Random(1)
    for identity in held_out[:6]:
        mask = detail_mask(rng)
        scene = Scene((identity,), "blue", "top right")
        image = torch.from_numpy(detailed_image(scene, mask))
        assert cell_hits(image, scene, mask) == 1.0
        assert cell_hits(image, scene, ~mask) == 0.0
        elsewhere = torch.from_numpy(detailed_image(Scene((identity,), "blue", "bottom left"), mask))
        assert cell_hits(elsewhere, scene, mask) == 0.0  # only background where the object should be


@committed
def test_explain_reruns_one_test_and_keeps_the_others(pack, tmp_path):
    """python -m toy_world explain --tests probe: the probe is redone, the other tests' numbers in
    explain.json are kept, and explain.md shows them all."""
    import json
    import shutil

    from toy_world import RESULTS
    from toy_world.__main__ import main

    for name in ("results.json", "explain.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    before = json.loads((tmp_path / "explain.json").read_text())
    before["probe"] = {"stale": True}
    (tmp_path / "explain.json").write_text(json.dumps(before))
    assert main(["explain", "--quick", "--tests", "probe", "--results", str(tmp_path)]) == 0
    after = json.loads((tmp_path / "explain.json").read_text())
    assert "stale" not in after["probe"] and "per patch/shape" in after["probe"]
    assert after["fitted"] == before["fitted"] and after["detail"] == before["detail"]
    assert set(after["minutes"]) == set(before["minutes"]) | {"probe"}
    text = (tmp_path / "explain.md").read_text()
    assert "linear probes" in text and "Fitted to one object each" in text and "no word for" in text
