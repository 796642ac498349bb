"""Adapter files of unknown layout: recognised by structure, the same function as the native file, or refused
with the readings that fit; and the inspect command that says which."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_factories import (
    DIFFUSERS_DIMS,
    DIFFUSERS_SITES,
    IPA_QFORMER,
    TINY_QFORMER,
    ip_adapter_state,
    nest,
    processor_name,
    random_adapter,
    renamed_state,
)
from safetensors.torch import save_file

from nested_attention.nested_core import AdapterFileError, build_adapter, load_adapter_checkpoint, save_native
from nested_attention.nested_core.checkpoint import BY_STRUCTURE, IP_ADAPTER_PLUS
from nested_attention.nested_core.convert import main as convert_main
from nested_attention.nested_core.inspect import main as inspect_main

ROOT = Path(__file__).resolve().parents[2]
PROCESSORS = [f"{site}.attn2.processor" for site in DIFFUSERS_SITES]


@pytest.fixture(scope="module")
def adapter():
    """One set of weights, written below in every layout."""
    return random_adapter(IPA_QFORMER, layer_dims=DIFFUSERS_DIMS, seed=3)


@pytest.fixture(scope="module")
def native(adapter, tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "native.safetensors"
    save_native(path, adapter.config, adapter.state_dict())
    return load_adapter_checkpoint(path)


def write(path: Path, state, container: str = "safetensors", metadata=None) -> Path:
    if container == "safetensors":
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, path, metadata=metadata)
    else:
        torch.save(state, path)
    return path


def outputs(checkpoint, seed: int = 7) -> list[torch.Tensor]:
    """The adapter's encode + project on fixed random CLIP features."""
    module = build_adapter(checkpoint.config, checkpoint.state_dict)
    features = torch.randn(2, 9, checkpoint.config.clip_vision_width, generator=torch.Generator().manual_seed(seed))
    tokens = module.encode(features)
    return [tokens] + [t for pair in module.project(tokens) for t in pair]


def ip_pair(i: int, role: str) -> str:
    return f"ip_adapter.{2 * i + 1}.to_{role}_ip.weight"


# name -> (how to build the file's contents from the adapter, container, metadata, what the order is read by)
LAYOUTS = {
    "diffusers processors, renamed resampler with attn/ff and separate to_k/to_v": (
        lambda a: renamed_state(a, "resampler", "attn-ff", processor_name),
        "safetensors",
        None,
        "by diffusers names",
    ),
    "diffusers' own naming (IPAdapterPlusImageProjection, to_k_ip.0)": (
        lambda a: renamed_state(a, "image_proj_model", "diffusers", lambda i, r: processor_name(i, r, ".0")),
        "safetensors",
        None,
        "by diffusers names",
    ),
    "nested dict pickle: image_proj in diffusers naming beside ip_adapter.{2i+1}": (
        lambda a: nest(renamed_state(a, "image_proj", "diffusers", ip_pair)),
        "torch",
        None,
        "by index",
    ),
    "state_dict-wrapped pickle, encoder.* and adapter_modules.{i}.to_k": (
        lambda a: {
            "state_dict": nest(
                renamed_state(a, "encoder", "attn-ff", lambda i, r: f"adapter_modules.{i}.to_{r}.weight")
            )
        },
        "torch",
        None,
        "by index",
    ),
    "model-wrapped pickle, resampler at the top level, kv.{1..L}.key/value": (
        lambda a: {
            "model": renamed_state(a, "", "attn-ff", lambda i, r: f"kv.{i + 1}.{'key' if r == 'k' else 'value'}.weight")
        },
        "torch",
        None,
        "by index",
    ),
    "module-wrapped IP-Adapter-Plus names": (
        lambda a: {"module": nest(ip_adapter_state(a))},
        "torch",
        None,
        "by index",
    ),
    "Hugging Face names, latents [N, d], heads stated in the metadata": (
        lambda a: renamed_state(a, "perceiver", "hf", lambda i, r: f"layers.{i}.{r}_proj.weight"),
        "safetensors",
        {"heads": "2"},
        "by index",
    ),
    "heads stated as a JSON object's field": (
        lambda a: renamed_state(a, "perceiver", "hf", processor_name),
        "safetensors",
        {"config": '{"resampler_depth": 2, "dim_head": 64}'},
        "by diffusers names",
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_of_the_same_weights_reads_as_the_native_file(adapter, native, tmp_path, layout):
    build, container, metadata, order = LAYOUTS[layout]
    path = write(tmp_path / "adapter_file", build(adapter), container, metadata)
    checkpoint = load_adapter_checkpoint(path)

    assert checkpoint.format.startswith(BY_STRUCTURE) and f"{len(DIFFUSERS_DIMS)} layers {order}" in checkpoint.format
    assert checkpoint.config.qformer == IPA_QFORMER and checkpoint.config.layer_dims == DIFFUSERS_DIMS
    assert checkpoint.config.layer_keys is None  # diffusers order, matched to the model's layers at apply time
    assert sorted(checkpoint.state_dict) == sorted(native.state_dict)
    for name, tensor in native.state_dict.items():
        assert torch.equal(checkpoint.state_dict[name], tensor), name
    for ours, theirs in zip(outputs(checkpoint), outputs(native), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert len(checkpoint.layer_sources) == len(DIFFUSERS_DIMS)
    if order == "by diffusers names":
        assert list(checkpoint.layer_sources) == PROCESSORS  # down, up, mid; numbers compared as numbers


def test_the_diffusers_order_is_not_the_order_of_the_names_as_text():
    """Guard on the fixture: sorting the processor names as text would give another order."""
    assert sorted(PROCESSORS) != PROCESSORS


def test_native_and_ip_adapter_plus_files_keep_their_formats(adapter, native, tmp_path):
    assert native.format == "native nested-adapter" and native.layer_sources[0] == "nested.0"
    path = write(tmp_path / "ipa.safetensors", ip_adapter_state(adapter))
    checkpoint = load_adapter_checkpoint(path)
    assert checkpoint.format == IP_ADAPTER_PLUS and checkpoint.layer_sources[:2] == ("ip_adapter.1", "ip_adapter.3")


def test_head_width_is_read_from_the_metadata_when_the_convention_does_not_fit(tmp_path):
    """TINY_QFORMER has heads of width 16: with IP-Adapter-like names but no stated heads it is refused."""
    source = random_adapter(TINY_QFORMER, layer_dims=(32, 64, 32), seed=5)
    state = renamed_state(source, "resampler", "attn-ff", processor_name)
    refused = refusal(write(tmp_path / "unstated.safetensors", state))
    assert "not a multiple of the conventional head width 64" in refused.found and "2 x 16" in refused.found
    for metadata in ({"heads": "2"}, {"head_dim": "16"}, {"num_heads": "2", "dim_head": "16"}):
        checkpoint = load_adapter_checkpoint(write(tmp_path / "stated.safetensors", state, metadata=metadata))
        assert checkpoint.config.qformer == TINY_QFORMER, metadata
        assert any("stated in the metadata" in note for note in checkpoint.notes)


def refusal(path) -> AdapterFileError:
    with pytest.raises(AdapterFileError) as info:
        load_adapter_checkpoint(path)
    assert os.path.basename(str(path)) in str(info.value)
    return info.value


SMALL = (32, 64, 32)


def small_state(naming="attn-ff", pair=processor_name, prefix="resampler"):
    return renamed_state(random_adapter(IPA_QFORMER, layer_dims=SMALL, seed=1), prefix, naming, pair)


def two_resamplers():
    state = small_state()
    state.update({"encoder" + k[len("resampler") :]: v for k, v in small_state().items() if k.startswith("resampler.")})
    return state


def unnamed_attention():
    names = {"to_q": "a", "to_k": "b", "to_v": "c", "to_out": "d"}
    state = {}
    for name, tensor in small_state().items():
        for ours, other in names.items():
            name = name.replace(f"attn.{ours}.", f"attn.{other}.")
        state[name] = tensor
    return state


def two_adapters():
    state = small_state(pair=lambda i, r: processor_name(i, r, ".0"))
    state.update(small_state(pair=lambda i, r: processor_name(i, r, ".1")))
    return state


def extra_latents():
    state = small_state()
    state["resampler.positions"] = torch.zeros(1, 4, 128)
    return state


AMBIGUOUS = {
    "two groups could each be the resampler": (
        two_resamplers,
        None,
        ["2 groups that could each be the resampler", "'encoder.*'", "'resampler.*'"],
    ),
    "unknown head count with several divisors": (
        lambda: small_state("hf"),
        None,
        ["attention width of 128", "1 x 128, 2 x 64, 4 x 32", "not named like IP-Adapter's", "--heads N"],
    ),
    "keys and values that cannot be told apart": (
        lambda: small_state(pair=lambda i, r: f"layers.{i}.proj_{'a' if r == 'k' else 'b'}.weight"),
        None,
        ["cannot be told apart", "'proj_a' / 'proj_b'"],
    ),
    "a projection count that fits two pairings": (
        lambda: small_state(pair=lambda i, r: f"proj.{2 * i + (r == 'v')}.weight"),
        None,
        ["6 projections", "3 pairs taken in turn", "3 keys followed by 3 values"],
    ),
    "two groups of pairs": (
        lambda: small_state(pair=lambda i, r: f"{'ip' if i < 2 else 'kv'}.{i}.to_{r}.weight"),
        None,
        ["several groups of key/value pairs", "'ip.#.to_{k,v}.weight' (2 pairs)", "'kv.#.to_{k,v}.weight' (1 pair)"],
    ),
    "attention projections whose names say nothing": (
        unnamed_attention,
        None,
        ["readings of its names fit equally well", "'attn.c'", "'attn.d'"],
    ),
    "two adapters' processors": (two_adapters, None, ["two pairs for one layer", "to_{k,v}_ip.1.weight"]),
    "two candidates for the latents": (extra_latents, None, ["several tensors could be the latents"]),
    "stated heads that do not divide the width": (small_state, {"heads": "3"}, ["3 heads", "2 x 64"]),
    "conflicting stated heads": (small_state, {"heads": "2", "num_heads": "4"}, ["conflicting metadata"]),
    "heads in superscript digits": (small_state, {"heads": "²"}, ["metadata heads='²'"]),
    "self-attention processors": (
        lambda: small_state(pair=lambda i, r: processor_name(i, r).replace("attn2", "attn1")),
        None,
        ["processor weights on attn1"],
    ),
    "layers numbered with a gap": (
        lambda: small_state(pair=lambda i, r: f"kv.{(0, 1, 3)[i]}.to_{r}.weight"),
        None,
        ["3 key/value pairs numbered 0, 1, 3"],
    ),
    "a resampler alone": (
        lambda: {k: v for k, v in small_state().items() if k.startswith("resampler.")},
        None,
        ["no per-layer key/value projections"],
    ),
    "a tensor of neither part": (
        lambda: small_state() | {"extra.weight": torch.zeros(3, 3)},
        None,
        ["neither the resampler nor key/value pairs: 'extra.weight'"],
    ),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS))
def test_ambiguous_or_incomplete_files_are_refused_with_what_was_found(tmp_path, case):
    build, metadata, expected = AMBIGUOUS[case]
    error = refusal(write(tmp_path / "release.safetensors", build(), metadata=metadata))
    for text in expected:
        assert text in str(error), (text, str(error))
    assert "python -m nested_core.inspect" in str(error)


def test_a_file_without_a_resampler_points_to_the_inspect_command(tmp_path):
    error = refusal(write(tmp_path / "weights.safetensors", {"something.weight": torch.zeros(4, 4)}))
    assert "no Perceiver resampler" in error.found and "python -m nested_core.inspect" in str(error)
    state = {k: v for k, v in small_state().items() if not k.startswith("resampler.layers.0.attn.norm2.")}
    error = refusal(write(tmp_path / "incomplete.safetensors", state))
    assert "nearest to a resampler: block 0 of 'resampler.layers.{j}': 2 LayerNorm(s) [128]" in error.found


def test_the_head_count_can_be_given_to_the_converter(tmp_path):
    source = write(tmp_path / "release.safetensors", small_state("hf"))
    assert convert_main([str(source), str(tmp_path / "out.safetensors")]) == 2
    assert convert_main([str(source), str(tmp_path / "out.safetensors"), "--heads", "2"]) == 0
    converted = load_adapter_checkpoint(tmp_path / "out.safetensors")
    assert converted.format == "native nested-adapter" and converted.config.qformer == IPA_QFORMER


def test_inspect_reports_a_recognised_file(adapter, tmp_path, capsys):
    path = write(tmp_path / "release.safetensors", renamed_state(adapter, "resampler", "attn-ff", processor_name))
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "loads: yes" in out and "format: recognised by structure: resampler 'resampler.*'" in out
    assert "4 tokens, width 128, depth 2, 2 heads x head width 64, feed-forward x4, in 48" in out
    assert f"layers: {len(DIFFUSERS_DIMS)}" in out
    assert "layer 0 <- down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor" in out
    assert f"layer {len(DIFFUSERS_DIMS) - 1} <- mid_block.attentions.0.transformer_blocks.1.attn2.processor" in out
    assert re.search(r"\n  resampler\.layers\.0\.attn\.to_k\.weight +\[128, 128\] +float32\n", out)


def test_inspect_reports_a_refused_file_and_an_unreadable_one(tmp_path, capsys):
    path = write(tmp_path / "release.safetensors", small_state("hf"))
    assert inspect_main([str(path)]) == 2
    out = capsys.readouterr().out
    assert "loads: no" in out and "found: a resampler attention width of 128" in out and "2 x 64" in out
    assert "resampler.blocks.0.attn.q_proj.weight" in out  # the tensor list follows
    assert inspect_main([str(path), "--heads", "2"]) == 0
    capsys.readouterr()
    (tmp_path / "page.bin").write_text("<!DOCTYPE html><html></html>")
    assert inspect_main([str(tmp_path / "page.bin")]) == 2
    assert "web page" in capsys.readouterr().out


def test_inspect_runs_from_the_repository_root(tmp_path):
    path = write(tmp_path / "release.safetensors", small_state())
    result = subprocess.run(
        [sys.executable, "-m", "nested_core.inspect", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loads: yes" in result.stdout and "layer 2 <- " in result.stdout
