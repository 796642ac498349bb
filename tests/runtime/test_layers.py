"""Layer ids: enumerated from real-structure SD1.5/SDXL UNets, ordered as diffusers orders them."""

from __future__ import annotations

import re

import comfy.utils
import pytest

from nested_attention.nested_core import LayerKey, NestedAttentionError, SiteShape, bind_layers, diffusers_order
from nested_attention.nodes.model_layers import attn2_sites
from nested_dev import tiny_models

# The real SD1.5 / SDXL UNet structure (block and transformer depths) at a small width.
REAL_STRUCTURE = {
    "sd15": dict(
        tiny_models.UNET_CONFIGS["sd15"],
        model_channels=32,
        channel_mult=[1, 2, 4, 4],
        num_res_blocks=[2, 2, 2, 2],
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_middle=1,
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        context_dim=768,
        num_heads=8,
    ),
    "sdxl": dict(
        tiny_models.UNET_CONFIGS["sdxl"],
        model_channels=32,
        channel_mult=[1, 2, 4],
        num_res_blocks=[2, 2, 2],
        transformer_depth=[0, 0, 2, 2, 10, 10],
        transformer_depth_middle=10,
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
        context_dim=2048,
        num_head_channels=16,
    ),
}
_DIFFUSERS = re.compile(
    r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2\.to_k\.weight$"
)


def diffusers_processor_rank(name: str) -> tuple:
    """diffusers registers down_blocks, then up_blocks, then mid_block; indices ascend inside."""
    m = _DIFFUSERS.match(name)
    return (
        {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}[m.group(1)],
        int(m.group(2) or 0),
        int(m.group(3)),
        int(m.group(4)),
    )


@pytest.mark.parametrize("kind,count", [("sd15", 16), ("sdxl", 70)])
def test_sites_and_order_match_comfyuis_diffusers_mapping(pack, kind, count):
    model = tiny_models.build_unet(kind, unet=REAL_STRUCTURE[kind])
    sites = attn2_sites(model)
    assert len(sites) == count
    assert all(key.block != "middle" or key.number == 0 for key in sites)
    assert {s.context_dim for s in sites.values()} == {REAL_STRUCTURE[kind]["context_dim"]}

    to_comfy = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    by_path = {comfy_path: name for name, comfy_path in to_comfy.items() if _DIFFUSERS.match(name)}

    def comfy_path(key) -> str:
        block = {
            "input": f"input_blocks.{key.number}.1",
            "output": f"output_blocks.{key.number}.1",
            "middle": "middle_block.1",
        }[key.block]
        return f"{block}.transformer_blocks.{key.depth}.attn2.to_k.weight"

    names = {key: by_path[comfy_path(key)] for key in sites}
    expected = sorted(sites, key=lambda key: diffusers_processor_rank(names[key]))
    ours = diffusers_order(sites)
    assert [str(k) for k in ours] == [str(k) for k in expected]
    assert str(ours[0]) == ("input.1.0" if kind == "sd15" else "input.4.0")
    assert names[ours[-1]].startswith("mid_block")


def test_layer_keys_parse_and_print():
    key = LayerKey.parse(" middle.0.3 ")
    assert key == LayerKey("middle", 0, 3) and str(key) == "middle.0.3"
    with pytest.raises(ValueError):
        LayerKey.parse("mid.0")


def test_binding_matches_by_key_and_reports_unserved_layers():
    sites = {
        LayerKey("input", 1, 0): SiteShape(32, 64),
        LayerKey("middle", 0, 0): SiteShape(64, 64),
        LayerKey("output", 3, 0): SiteShape(32, 64),
    }
    adapter_keys = (LayerKey("input", 1, 0), LayerKey("middle", 0, 0), LayerKey("input", 9, 0))
    layout = bind_layers("a.safetensors", (32, 64, 16), 64, adapter_keys, sites)
    assert layout.index_of == {LayerKey("input", 1, 0): 0, LayerKey("middle", 0, 0): 1}
    assert layout.unserved == (LayerKey("output", 3, 0),) and layout.unused == ("input.9.0",)
    by_order = bind_layers("ipa.bin", (32, 32, 64), 64, None, sites)
    assert by_order.index_of == {k: i for i, k in enumerate(diffusers_order(sites))}


@pytest.mark.parametrize(
    "dims,width,keys,message",
    [
        ((32, 32, 64), 768, None, "text context of width 768"),
        ((32, 64), 64, None, "has 2 cross-attention layers and no layer ids; the model has 3"),
        ((64, 32, 64), 64, None, "has width 64 but the model's layer input.1.0 has width 32"),
        ((32,), 64, (LayerKey("input", 7, 0),), "none of the 1 layers"),
    ],
)
def test_binding_refuses_adapters_for_another_model(dims, width, keys, message):
    sites = {
        LayerKey("input", 1, 0): SiteShape(32, 64),
        LayerKey("middle", 0, 0): SiteShape(64, 64),
        LayerKey("output", 3, 0): SiteShape(32, 64),
    }
    with pytest.raises(NestedAttentionError, match=re.escape(message)):
        bind_layers("x", dims, width, keys, sites)
