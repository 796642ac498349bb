"""Adapter files: native round trip, IP-Adapter-Plus layouts, the converter, and clear refusals."""

from __future__ import annotations

import json
import os

import pytest
import torch
from core_factories import IPA_QFORMER, ip_adapter_state, random_adapter, write_ip_adapter
from safetensors.torch import save_file

from nested_attention.nested_core import (
    AdapterFileError,
    LayerKey,
    build_adapter,
    fingerprint,
    load_adapter_checkpoint,
    save_native,
)
from nested_attention.nested_core.checkpoint import IP_ADAPTER_PLUS, NATIVE
from nested_attention.nested_core.convert import main as convert_main
from nested_attention.nested_core.subject import SubjectTokens, load_subject, save_subject

KEYS = (LayerKey("input", 1, 0), LayerKey("output", 3, 0), LayerKey("middle", 0, 0))


def outputs(adapter, seed=5):
    features = torch.randn(2, 11, adapter.config.qformer.in_dim, generator=torch.Generator().manual_seed(seed))
    tokens = adapter.encode(features.to(next(adapter.parameters()).dtype))
    return [tokens] + [t for pair in adapter.project(tokens) for t in pair]


def assert_same_function(a, b):
    for x, y in zip(outputs(a), outputs(b), strict=True):
        torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=0)


def test_native_round_trip_gives_identical_outputs(tmp_path):
    adapter = random_adapter(layer_keys=KEYS)
    path = tmp_path / "any name at all.weights"
    save_native(path, adapter.config, adapter.state_dict())
    checkpoint = load_adapter_checkpoint(path)
    assert checkpoint.format == NATIVE and checkpoint.config == adapter.config
    assert_same_function(adapter, build_adapter(checkpoint.config, checkpoint.state_dict))


@pytest.mark.parametrize(
    "container,name",
    [
        ("safetensors", "ipa.safetensors"),
        ("torch", "ipa.bin"),
        ("safetensors", "mislabelled.bin"),
        ("torch", "no_extension"),
    ],
)
def test_ip_adapter_plus_files_load_as_nested_adapters(tmp_path, container, name):
    source = random_adapter(IPA_QFORMER, layer_dims=(64, 64, 128, 32), seed=2)
    path = write_ip_adapter(tmp_path / name, source, container, dtype=torch.float32)
    checkpoint = load_adapter_checkpoint(path)
    assert checkpoint.format == IP_ADAPTER_PLUS
    assert checkpoint.config.qformer == IPA_QFORMER
    assert checkpoint.config.layer_dims == (64, 64, 128, 32) and checkpoint.config.layer_keys is None
    assert_same_function(source, build_adapter(checkpoint.config, checkpoint.state_dict))


def test_converter_writes_a_native_file_with_the_same_function(tmp_path, caplog):
    source = random_adapter(IPA_QFORMER, layer_dims=(64, 32), seed=4)
    ipa = write_ip_adapter(tmp_path / "ip-adapter-plus.bin", source, "torch", dtype=torch.float32)
    out = tmp_path / "nested.safetensors"
    assert convert_main([ipa, str(out), "--class-word", "person"]) == 0
    native = load_adapter_checkpoint(out)
    original = load_adapter_checkpoint(ipa)
    assert native.format == NATIVE and native.config.class_word == "person"
    assert fingerprint(native.config, native.state_dict) == fingerprint(original.config, original.state_dict)
    assert_same_function(source, build_adapter(native.config, native.state_dict))
    assert convert_main([ipa, str(out)]) == 2, "must not replace an existing file without --force"
    assert convert_main([ipa, str(out), "--force", "--dtype", "fp16"]) == 0
    assert load_adapter_checkpoint(out).state_dict["qformer.latents"].dtype == torch.float16


def test_fingerprint_tells_adapters_apart():
    a, b = random_adapter(seed=1), random_adapter(seed=2)
    assert fingerprint(a.config, a.state_dict()) != fingerprint(b.config, b.state_dict())


def refusal(path) -> AdapterFileError:
    with pytest.raises(AdapterFileError) as info:
        load_adapter_checkpoint(path)
    assert os.path.basename(str(path)) in str(info.value)
    return info.value


def test_refusals_name_what_was_found(tmp_path):
    assert "no such file" in str(refusal(tmp_path / "missing.safetensors"))
    (tmp_path / "empty.bin").write_bytes(b"")
    assert "empty" in str(refusal(tmp_path / "empty.bin"))
    (tmp_path / "page.safetensors").write_text("<!DOCTYPE html><html>Sign in</html>")
    assert "web page" in str(refusal(tmp_path / "page.safetensors"))
    (tmp_path / "lfs.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    assert "Git LFS" in str(refusal(tmp_path / "lfs.bin"))

    save_file(
        {"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
        tmp_path / "ip-adapter_sd15.safetensors",
    )
    assert "plain IP-Adapter" in str(refusal(tmp_path / "ip-adapter_sd15.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, tmp_path / "sd.safetensors")
    assert "Stable Diffusion checkpoint" in str(refusal(tmp_path / "sd.safetensors"))


def tampered_ip_adapter(tmp_path, edit, name="ipa.safetensors"):
    state = ip_adapter_state(random_adapter(IPA_QFORMER, layer_dims=(64, 32)))
    edit(state)
    save_file(state, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda s: s.pop("image_proj.layers.1.0.to_out.weight"), "missing tensor"),
        (lambda s: s.update({"image_proj.extra": torch.zeros(1)}), "unexpected tensor"),
        (lambda s: s.update({"ip_adapter.3.to_v_ip.weight": torch.zeros(32, 16)}), "shape [32, 16]"),
        (lambda s: s.update({"image_proj.proj_in.bias": torch.zeros(128, dtype=torch.int32)}), "dtype torch.int32"),
        (lambda s: s["ip_adapter.1.to_k_ip.weight"].__setitem__((0, 0), float("nan")), "NaN"),
        (lambda s: s.pop("ip_adapter.3.to_k_ip.weight"), "missing tensor"),
        (lambda s: s.update({"ip_adapter.7.to_k_ip.weight": torch.zeros(32, 32)}), "numbered 1, 3, 7"),
    ],
)
def test_damaged_ip_adapter_files_are_refused_with_the_reason(tmp_path, edit, expected):
    assert expected in str(refusal(tampered_ip_adapter(tmp_path, edit)))


def test_native_metadata_problems_are_refused(tmp_path):
    adapter = random_adapter(layer_keys=KEYS)
    path = tmp_path / "native.safetensors"
    save_native(path, adapter.config, adapter.state_dict())
    state = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    from nested_attention.nested_core.checkpoint.native import metadata_for

    cases = [
        ("format_version", "2", "newer release"),
        ("qformer", "{not json", "unusable 'qformer'"),
        ("layer_order", json.dumps(["input.1.0"]), "1 layer ids"),
        ("num_tokens", "7", "num_tokens=7"),
        # str.isdigit() is true for these, int() refuses them: refused as metadata, naming the file
        ("clip_vision_width", "²", "clip_vision_width='²'"),
        ("num_tokens", "٣", "num_tokens='٣'"),
        ("context_dim", "1²", "context_dim='1²'"),
    ]
    for key, value, expected in cases:
        meta = metadata_for(adapter.config) | {key: value}
        save_file(state, path, metadata=meta)
        assert expected in str(refusal(path)), key
    meta = metadata_for(adapter.config)
    del meta["format"]
    save_file(state, path, metadata=meta)
    assert "no 'format' metadata" in str(refusal(path))


def test_truncated_files_are_refused(tmp_path):
    source = random_adapter(IPA_QFORMER, layer_dims=(64,))
    for container, name in (("safetensors", "a.safetensors"), ("torch", "a.bin")):
        path = write_ip_adapter(tmp_path / name, source, container)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) * 2 // 3])
        assert "damaged" in str(refusal(path))


class Payload:
    """Unpickling this would create a file: the loader must never run it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_code_is_never_executed(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"latents": torch.zeros(1)}, "payload": Payload(str(target))}, path)
    assert "nothing in it was run" in str(refusal(path))
    assert not target.exists()


def test_subject_files_round_trip_and_refuse_other_files(tmp_path):
    subject = SubjectTokens(torch.randn(1, 4, 32), "abc123", num_images=3, combine="average")
    save_subject(tmp_path / "s.safetensors", subject)
    loaded = load_subject(tmp_path / "s.safetensors")
    assert torch.equal(loaded.tokens, subject.tokens) and loaded.adapter_fingerprint == "abc123"
    assert loaded.num_images == 3
    adapter = random_adapter()
    save_native(tmp_path / "adapter.safetensors", adapter.config, adapter.state_dict())
    with pytest.raises(AdapterFileError, match="subject file"):
        load_subject(tmp_path / "adapter.safetensors")


@pytest.mark.parametrize("key", ["format_version", "num_images"])
@pytest.mark.parametrize("value", ["²", "٣", "1²", "x"])
def test_subject_metadata_numbers_must_be_ascii_digits(tmp_path, key, value):
    path = tmp_path / "subject.safetensors"
    tensors = {"tokens": torch.randn(1, 4, 32)}
    meta = {"format": "nested-subject", "format_version": "1", "adapter_fingerprint": "abc123", "num_images": "2"}
    save_file(tensors, path, metadata=meta | {key: value})
    with pytest.raises(AdapterFileError) as info:
        load_subject(path)
    assert "subject.safetensors" in str(info.value) and repr(value) in str(info.value)
