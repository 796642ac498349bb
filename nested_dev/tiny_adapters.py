"""Random-weight nested adapters and subjects sized for the tiny stand-in models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from nested_attention.nested_core.adapter import AdapterConfig, NestedAdapter, fingerprint
from nested_attention.nested_core.checkpoint import save_native
from nested_attention.nested_core.checkpoint.ipadapter import to_ip_adapter_layout
from nested_attention.nested_core.layers import diffusers_order
from nested_attention.nested_core.qformer import QFormerConfig
from nested_attention.nested_core.subject import SubjectTokens, save_subject
from nested_attention.nodes.model_layers import attn2_sites

from . import tiny_models

#: Q-Former settings for the tiny models (CLIP vision width 48). The IP-Adapter-Plus layout fixes the
#: head width at 64, so that variant uses a wider Q-Former.
TINY_QFORMER = dict(num_queries=4, dim=32, depth=2, heads=2, head_dim=16, ff_mult=2, in_dim=48)
TINY_IPA_QFORMER = dict(num_queries=4, dim=128, depth=2, heads=2, head_dim=64, ff_mult=4, in_dim=48)


def tiny_adapter(
    kind: str, seed: int = 0, ip_adapter_layout: bool = False, class_word: str = "person", scale: float = 0.3
):
    """A NestedAdapter (the pack's class) whose layers match the tiny UNet of ``kind``."""
    sites = attn2_sites(tiny_models.build_unet(kind, seed=0))
    keys = tuple(diffusers_order(sites))
    settings = dict(TINY_IPA_QFORMER if ip_adapter_layout else TINY_QFORMER, out_dim=tiny_models.CONTEXT_DIM[kind])
    config = AdapterConfig(
        qformer=QFormerConfig(**settings),
        layer_dims=tuple(sites[k].inner_dim for k in keys),
        layer_keys=None if ip_adapter_layout else keys,
        base_family=f"tiny-{kind}",
        class_word=class_word,
    )
    adapter = NestedAdapter(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return adapter.eval()


def write_tiny_adapter(
    path: Path, kind: str, seed: int = 0, ip_adapter_layout: bool = False, class_word: str = "person"
) -> Path:
    """Write a tiny adapter in the native format, or in the IP-Adapter-Plus layout."""
    adapter = tiny_adapter(kind, seed, ip_adapter_layout, class_word)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not ip_adapter_layout:
        save_native(path, adapter.config, adapter.state_dict())
        return path
    state = to_ip_adapter_layout(adapter.state_dict())
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, path)
    return path


def write_tiny_subject(path: Path, adapter, seed: int = 0, tokens: int | None = None) -> Path:
    """A subject file whose tokens are random (as if encoded by ``adapter``)."""
    count = tokens or adapter.config.num_tokens
    gen = torch.Generator().manual_seed(seed)
    subject = SubjectTokens(
        tokens=torch.randn(1, count, adapter.config.context_dim, generator=gen),
        adapter_fingerprint=fingerprint(adapter.config, adapter.state_dict()),
        num_images=1,
        combine="average",
    )
    save_subject(path, subject)
    return Path(path)
