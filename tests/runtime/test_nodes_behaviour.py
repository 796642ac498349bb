"""Node behaviour around the math: untouched inputs, errors at the right node, encoding, files, caching."""

from __future__ import annotations

import copy
import logging

import comfy.sample
import pytest
import torch
from graph import Graph, GraphError, run_prompt

import nodes as comfy_nodes
from nested_attention.nested_core import build_adapter, load_adapter_checkpoint
from nested_attention.nested_core.adapter import AdapterConfig, fingerprint
from nested_attention.nested_core.checkpoint import save_native
from nested_attention.nested_core.errors import NestedAttentionError
from nested_attention.nested_core.layers import LayerKey
from nested_attention.nested_core.qformer import QFormerConfig
from nested_attention.nested_core.subject import load_subject
from nested_attention.nodes.adapter_runtime import load_adapter
from nested_attention.nodes.contract import REGISTRY_KEY
from nested_attention.nodes.encode import encode_subject
from nested_attention.nodes.model_layers import attn2_sites
from nested_attention.nodes.sampling import NestedRun
from nested_dev import tiny_models
from nested_dev.dev_nodes import CAPTURED


def node(name):
    return comfy_nodes.NODE_CLASS_MAPPINGS[name]


def sample(model, kind, text_seed=1, steps=2, cfg=5.0):
    clip = tiny_models.build_clip(kind, seed=0)
    positive = node("NestedTextEncode").execute(clip, "a photo of a person at the beach").args[0]
    negative = node("NestedTextEncode").execute(clip, "blurry").args[0]
    latent = torch.zeros(1, 4, 8, 8)
    return comfy.sample.sample(
        model, comfy.sample.prepare_noise(latent, 0), steps, cfg, "euler", "normal", positive, negative, latent, seed=0
    )


def applied(pack, assets, kind="sd15", adapter="person", subject="person_s1", **kw):
    adapter = load_adapter(str(assets / "nested_adapters" / f"{kind}_{adapter}.safetensors"))
    subject = load_subject(str(assets / "nested_subjects" / f"{kind}_{subject}.safetensors"))
    model = tiny_models.build_unet(kind, seed=0)
    options = dict(token="person", weight=1.0, start_at=0.0, end_at=1.0) | kw
    return model, node("ApplyNestedAttention").execute(model, adapter, subject, **options).args[0], adapter, subject


def test_the_input_model_is_never_modified(pack, assets):
    model = tiny_models.build_unet("sd15", seed=0)
    options_before = copy.deepcopy(model.model_options)
    reference = sample(model, "sd15")
    _, patched, adapter, subject = applied(pack, assets)
    patched = node("ApplyNestedAttention").execute(model, adapter, subject, "person", 1.0, 0.0, 1.0).args[0]
    assert not torch.allclose(sample(patched, "sd15"), reference), "the subject must change the result"
    assert torch.equal(sample(model, "sd15"), reference)
    assert model.model_options == options_before


def test_a_clone_shares_subject_tensors_and_later_patches_do_not_leak_back(pack, assets):
    _, patched, _, _ = applied(pack, assets)
    registry_key = REGISTRY_KEY
    clone = patched.clone()
    assert (
        clone.model_options["transformer_options"][registry_key][0]
        is patched.model_options["transformer_options"][registry_key][0]
    )
    before = sample(patched, "sd15")
    g_model = node("NestedDevForeignPatch").execute(patched, 0.3, "add").args[0]  # add() onto our patches
    assert not torch.equal(sample(g_model, "sd15"), before)
    assert torch.equal(sample(patched, "sd15"), before), "add() on a clone must not reach the original"


def test_nested_keys_and_values_are_computed_once_per_device_and_dtype(pack, assets, monkeypatch):
    _, patched, adapter, _ = applied(pack, assets)
    runs = []
    original_init = NestedRun.__init__

    def spy(self, registry):
        original_init(self, registry)
        runs.append(self)

    monkeypatch.setattr(NestedRun, "__init__", spy)
    projections = []
    monkeypatch.setattr(type(adapter), "project", lambda self, tokens: projections.append(1))
    sample(patched, "sd15", steps=3)
    assert len(runs) == 1 and not projections
    assert len(runs[0]._kv) == len(attn2_sites(patched))


@pytest.mark.parametrize(
    "inputs,message",
    [
        (dict(token="ohwx man"), "is 2 CLIP tokens"),
        (dict(token=" "), "token is empty"),
        (dict(start_at=0.8, end_at=0.2), "start_at 0.8 and end_at 0.2"),
        (dict(occurrence=-1), "occurrence is -1"),
    ],
)
def test_apply_refuses_bad_inputs_before_sampling(pack, assets, inputs, message):
    with pytest.raises(NestedAttentionError, match=message):
        applied(pack, assets, **inputs)


def test_a_word_of_two_tokens_fails_validation_before_any_node_runs(pack, assets):
    """validate_inputs: the prompt is refused as a whole, naming the input, and not even the loaders run."""
    from nested_dev.headless import execute

    g = Graph()
    tiny = g.add("NestedDevTinyCheckpoint", kind="sd15", seed=0)
    adapter = g.add("LoadNestedAdapter", adapter_name="sd15_person.safetensors")
    subject = g.add("LoadNestedSubject", subject_name="sd15_person_s1.safetensors")
    model = g.add(
        "ApplyNestedAttention",
        model=tiny[0],
        adapter=adapter[0],
        subject=subject[0],
        token="ohwx man",
        weight=1.0,
        start_at=0.0,
        end_at=1.0,
    )
    positive = g.add("NestedTextEncode", clip=tiny[1], text="a photo of ohwx man")
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.sample(model[0], positive[0], positive[0], latent[0], seed=1, steps=1, cfg=1.0)
    g.add("NestedDevCapture", value=sampled[0], label="never")
    CAPTURED.pop("never", None)
    with pytest.raises(ValueError) as error:
        execute(g.prompt, "validation")
    report = str(error.value)
    assert "'class_type': 'ApplyNestedAttention'" in report and "'input_name': 'token'" in report
    assert "token 'ohwx man' is 2 CLIP tokens ('ohwx', 'man')" in report
    assert "never" not in CAPTURED


def test_apply_refuses_an_adapter_for_another_base_model(pack, assets):
    g = Graph()
    tiny = g.add("NestedDevTinyCheckpoint", kind="sd15", seed=0)
    apply = g.add(
        "ApplyNestedAttention",
        model=tiny[0],
        token="person",
        weight=1.0,
        start_at=0.0,
        end_at=1.0,
        adapter=g.add("LoadNestedAdapter", adapter_name="sdxl_person.safetensors")[0],
        subject=g.add("LoadNestedSubject", subject_name="sdxl_person_s1.safetensors")[0],
    )
    g.add("NestedDevCapture", value=apply[0], label="unused")
    with pytest.raises(GraphError) as error:
        run_prompt(g.prompt)
    assert error.value.node_type == "ApplyNestedAttention"
    assert "text context of width 64" in error.value.message and "width is 32" in error.value.message


def test_apply_refuses_a_subject_of_another_adapter_and_overlapping_tokens(pack, assets):
    with pytest.raises(NestedAttentionError, match="another adapter's Q-Former"):
        applied(pack, assets, subject="dog_s1")
    _, patched, adapter, subject = applied(pack, assets)
    with pytest.raises(NestedAttentionError, match="occurrence to 1 and 2"):
        node("ApplyNestedAttention").execute(patched, adapter, subject, "person", 1.0, 0.0, 1.0, occurrence=2)


def test_a_token_missing_from_the_prompt_warns_once_and_still_generates(pack, assets, caplog):
    _, patched, _, _ = applied(pack, assets, token="woman")
    with caplog.at_level(logging.WARNING):
        result = sample(patched, "sd15", steps=3)
    warnings = [r.getMessage() for r in caplog.records if "'woman' is not in the positive prompt" in r.getMessage()]
    assert len(warnings) == 1 and "a photo of a person at the beach" in warnings[0]
    assert torch.isfinite(result).all()


def test_a_prompt_not_encoded_with_nested_text_encode_warns(pack, assets, caplog):
    _, patched, _, _ = applied(pack, assets)
    positive = tiny_models.conditioning("sd15", seed=1)
    latent = torch.zeros(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING):
        comfy.sample.sample(
            patched,
            comfy.sample.prepare_noise(latent, 0),
            2,
            5.0,
            "euler",
            "normal",
            positive,
            tiny_models.conditioning("sd15", seed=2),
            latent,
            seed=0,
        )
    assert sum("not encoded with 'Nested Text Encode'" in r.getMessage() for r in caplog.records) == 1


def test_layers_missing_from_the_adapter_are_reported_once_and_skipped(pack, assets, tmp_path, caplog):
    full = load_adapter_checkpoint(assets / "nested_adapters" / "sd15_person.safetensors")
    keep = [0, 2, 4]
    config = AdapterConfig(
        qformer=QFormerConfig(**full.config.qformer.to_dict()),
        layer_dims=tuple(full.config.layer_dims[i] for i in keep),
        layer_keys=tuple(LayerKey(*full.config.layer_keys[i]) for i in keep),
        base_family="pruned",
        class_word="person",
    )
    state = {k: v for k, v in full.state_dict.items() if k.startswith("qformer.")}
    for new, old in enumerate(keep):
        state[f"nested.{new}.to_k.weight"] = full.state_dict[f"nested.{old}.to_k.weight"]
        state[f"nested.{new}.to_v.weight"] = full.state_dict[f"nested.{old}.to_v.weight"]
    path = tmp_path / "pruned.safetensors"
    save_native(path, config, state)
    adapter = load_adapter(str(path))
    subject = load_subject(str(assets / "nested_subjects" / "sd15_person_s1.safetensors"))
    with caplog.at_level(logging.WARNING):
        patched = (
            node("ApplyNestedAttention")
            .execute(tiny_models.build_unet("sd15"), adapter, subject, "person", 1.0, 0.0, 1.0)
            .args[0]
        )
    assert sum("has no weights for 4 of the model's 7" in r.getMessage() for r in caplog.records) == 1
    registry = patched.model_options["transformer_options"][REGISTRY_KEY]
    assert [str(k) for k in registry[0].layers] == [str(config.layer_keys[i]) for i in range(3)]
    assert torch.isfinite(sample(patched, "sd15")).all()


def test_load_node_names_the_file_and_the_problem(pack, assets):
    (assets / "nested_adapters" / "broken.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
    g = Graph()
    g.add("NestedDevCapture", value=g.add("LoadNestedAdapter", adapter_name="broken.safetensors")[0], label="x")
    with pytest.raises(GraphError) as error:
        run_prompt(g.prompt)
    assert error.value.node_type == "LoadNestedAdapter" and "broken.safetensors" in error.value.message
    (assets / "nested_adapters" / "broken.safetensors").unlink()


def encode_graph(kind: str, mask: bool = False, combine: str = "average", adapter: str = "person"):
    g = Graph()
    vision = g.add("NestedDevTinyCLIPVision", seed=0)
    first = g.add("EmptyImage", width=40, height=32, batch_size=1, color=0x3366CC)
    second = g.add("EmptyImage", width=40, height=32, batch_size=1, color=0xCC8833)
    image = g.add("ImageBatch", image1=first[0], image2=second[0])  # two different photos, in order
    inputs = dict(
        adapter=g.add("LoadNestedAdapter", adapter_name=f"{kind}_{adapter}.safetensors")[0],
        clip_vision=vision[0],
        image=image[0],
        combine=combine,
    )
    if mask:
        inputs["mask"] = g.add("SolidMask", value=1.0, width=40, height=32)[0]
    g.add("NestedDevCapture", value=g.add("EncodeSubjectQFormer", **inputs)[0], label="subject")
    g.add("NestedDevCapture", value=vision[0], label="clip_vision")
    g.add("NestedDevCapture", value=image[0], label="image")
    return g


@pytest.mark.parametrize("combine", ["average", "concat"])
def test_encode_node_runs_the_q_former_on_clip_penultimate_features(pack, assets, combine):
    run_prompt(encode_graph("sd15", combine=combine).prompt)
    subject = CAPTURED["subject"]
    assert not torch.equal(CAPTURED["image"][0], CAPTURED["image"][1])
    with torch.no_grad():
        features = CAPTURED["clip_vision"].encode_image(CAPTURED["image"].clone(), crop=True)[
            "penultimate_hidden_states"
        ]
    checkpoint = load_adapter_checkpoint(assets / "nested_adapters" / "sd15_person.safetensors")
    with torch.no_grad():
        double = build_adapter(checkpoint.config, {k: v.double() for k, v in checkpoint.state_dict.items()})
        reference = double.encode(features.clone().double())
    reference = (
        reference.mean(0, keepdim=True) if combine == "average" else reference.reshape(1, -1, reference.shape[-1])
    )
    torch.testing.assert_close(subject.tokens.double(), reference, rtol=1e-4, atol=1e-5)
    assert subject.num_images == 2 and subject.combine == combine
    assert subject.adapter_fingerprint == fingerprint(checkpoint.config, checkpoint.state_dict)


def test_an_all_ones_mask_keeps_the_photo_and_a_partial_mask_changes_it(pack, assets):
    run_prompt(encode_graph("sd15").prompt)
    plain = CAPTURED["subject"].tokens
    run_prompt(encode_graph("sd15", mask=True).prompt)
    torch.testing.assert_close(CAPTURED["subject"].tokens, plain)
    encode = encode_subject
    adapter = load_adapter(str(assets / "nested_adapters" / "sd15_person.safetensors"))
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    half = torch.zeros(1, 32, 32)
    half[:, :, :16] = 1
    vision = tiny_models.build_clip_vision(0)
    assert not torch.allclose(encode(adapter, vision, image, half).tokens, encode(adapter, vision, image).tokens)


def test_encode_refuses_an_empty_batch_and_a_clip_vision_of_another_width(pack, assets):
    encode = encode_subject
    errors = NestedAttentionError
    adapter = load_adapter(str(assets / "nested_adapters" / "sd15_person.safetensors"))
    with pytest.raises(errors, match="expected at least one photo"):
        encode(adapter, tiny_models.build_clip_vision(0), torch.zeros(0, 32, 32, 3))
    wide = tiny_models.build_clip_vision(0)
    wide.model.vision_model.embeddings.class_embedding = torch.nn.Parameter(torch.zeros(64))
    with pytest.raises(errors, match="CLIP vision model has width 64 but adapter 'sd15_person.safetensors' expects 48"):
        encode(adapter, wide, torch.zeros(1, 32, 32, 3))


def test_saved_subjects_load_back_and_never_overwrite(pack, assets):
    run_prompt(encode_graph("sd15").prompt)
    subject = CAPTURED["subject"]
    save = node("SaveNestedSubject")
    save.execute(subject, "alice")
    save.execute(subject, "alice")
    folder = assets / "nested_subjects"
    assert (folder / "alice_00001.safetensors").exists() and (folder / "alice_00002.safetensors").exists()
    loaded = node("LoadNestedSubject").execute("alice_00002.safetensors").args[0]
    assert torch.equal(loaded.tokens, subject.tokens) and loaded.adapter_fingerprint == subject.adapter_fingerprint


def test_public_node_interface(pack):
    expected = {
        "LoadNestedAdapter": ("Load Nested Adapter", {"adapter_name": "COMBO"}, ["NESTED_ADAPTER"]),
        "EncodeSubjectQFormer": (
            "Encode Subject (Q-Former)",
            {"adapter": "NESTED_ADAPTER", "clip_vision": "CLIP_VISION", "image": "IMAGE"},
            ["NESTED_SUBJECT"],
        ),
        "ApplyNestedAttention": (
            "Apply Nested Attention",
            {
                "model": "MODEL",
                "adapter": "NESTED_ADAPTER",
                "subject": "NESTED_SUBJECT",
                "token": "STRING",
                "weight": "FLOAT",
                "start_at": "FLOAT",
                "end_at": "FLOAT",
            },
            ["MODEL"],
        ),
        "NestedTextEncode": ("Nested Text Encode", {"clip": "CLIP", "text": "STRING"}, ["CONDITIONING"]),
    }
    for node_id, (title, required, outputs) in expected.items():
        info = node(node_id).GET_NODE_INFO_V1()
        assert info["display_name"] == title
        assert {
            name: spec[0] if isinstance(spec[0], str) else "COMBO" for name, spec in info["input"]["required"].items()
        } == required
        assert list(info["output"]) == outputs
    assert node("EncodeSubjectQFormer").GET_NODE_INFO_V1()["input"]["optional"]["mask"][0] == "MASK"
    assert node("ApplyNestedAttention").GET_NODE_INFO_V1()["input"]["optional"]["attn_mask"][0] == "MASK"
    assert node("ApplyNestedAttention").GET_NODE_INFO_V1()["input"]["required"]["weight"][1]["default"] == 1.0
