"""The attn2 (cross-attention) sites of a ComfyUI UNet, read from the model itself."""

from __future__ import annotations

import re
from typing import Any

from comfy.model_patcher import ModelPatcher

from ..nested_core.layers import LayerKey, SiteShape

_IN_OUT = re.compile(r"^(input|output)_blocks\.(\d+)\.\d+\.transformer_blocks\.(\d+)$")
_MIDDLE = re.compile(r"^middle_block\.\d+\.transformer_blocks\.(\d+)$")


def attn2_sites(model: ModelPatcher) -> dict[LayerKey, SiteShape]:
    """Every transformer block with cross-attention, keyed as ComfyUI's attn2 patches are.

    The middle block is always number 0 in ComfyUI's keys, whatever its module index.
    """
    sites: dict[LayerKey, SiteShape] = {}
    for key, attn2 in attn2_modules(model).items():
        inner, context = attn2.to_k.weight.shape
        sites[key] = SiteShape(inner_dim=int(inner), context_dim=int(context))
    return sites


def attn2_modules(model: ModelPatcher) -> dict[LayerKey, Any]:
    """The cross-attention module of every attn2 site (its to_k / to_v project the text context)."""
    unet = model.get_model_object("diffusion_model")
    modules: dict[LayerKey, Any] = {}
    for name, module in unet.named_modules():
        attn2 = getattr(module, "attn2", None)
        if attn2 is None or not hasattr(attn2, "to_k"):
            continue
        match = _IN_OUT.match(name)
        if match:
            key = LayerKey(match.group(1), int(match.group(2)), int(match.group(3)))
        else:
            match = _MIDDLE.match(name)
            if not match:
                continue
            key = LayerKey("middle", 0, int(match.group(1)))
        modules[key] = attn2
    return modules
