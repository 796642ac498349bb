"""Small random adapters and IP-Adapter-Plus files for the engine's tests."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from nested_attention.nested_core.adapter import AdapterConfig, NestedAdapter
from nested_attention.nested_core.checkpoint.ipadapter import to_ip_adapter_layout
from nested_attention.nested_core.qformer import QFormerConfig

TINY_QFORMER = QFormerConfig(num_queries=4, dim=32, depth=2, heads=2, head_dim=16, ff_mult=2, in_dim=24, out_dim=32)
IPA_QFORMER = QFormerConfig(num_queries=4, dim=128, depth=2, heads=2, head_dim=64, ff_mult=4, in_dim=48, out_dim=32)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so a wrong mapping cannot go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            is_norm = ("norm" in name or ".1.0." in name) and p.ndim == 1 and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_norm else 0.2 * noise)
    return module


def random_adapter(
    qformer: QFormerConfig = TINY_QFORMER,
    layer_dims=(32, 64, 64),
    seed: int = 0,
    layer_keys=None,
    class_word: str = "dog",
) -> NestedAdapter:
    config = AdapterConfig(
        qformer=qformer,
        layer_dims=tuple(layer_dims),
        layer_keys=layer_keys,
        base_family="custom",
        class_word=class_word,
    )
    return randomize_(NestedAdapter(config), seed).eval()


def ip_adapter_state(adapter: NestedAdapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under IP-Adapter-Plus names (image_proj.*, ip_adapter.{2i+1}.*)."""
    return {name: tensor.clone() for name, tensor in to_ip_adapter_layout(adapter.state_dict()).items()}


def write_ip_adapter(
    path: "str | os.PathLike[str]", adapter: NestedAdapter, container: str = "safetensors", dtype=torch.float16
) -> str:
    state = {k: v.to(dtype).contiguous() for k, v in ip_adapter_state(adapter).items()}
    path = os.fspath(path)
    if container == "safetensors":
        save_file(state, path)
    else:
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for name, tensor in state.items():
            group, rest = name.split(".", 1)
            nested[group][rest] = tensor
        torch.save(nested, path)
    return path
