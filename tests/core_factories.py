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


# Other layouts of the same weights, as a release of unknown naming might store them.

#: Module paths of the Q-Former's parts in other namings (block roles are relative to a block).
RESAMPLER_NAMINGS = {
    # renamed prefix, attention/feed-forward parts by name, separate to_k/to_v
    "attn-ff": {
        "latents": "latents",
        "proj_in": "proj_in",
        "proj_out": "proj_out",
        "norm_out": "norm_out",
        "blocks": "layers",
        "norm1": "attn.norm1",
        "norm2": "attn.norm2",
        "to_q": "attn.to_q",
        "to_k": "attn.to_k",
        "to_v": "attn.to_v",
        "to_out": "attn.to_out",
        "ff_norm": "ff.0",
        "ff_in": "ff.1",
        "ff_out": "ff.3",
    },
    # diffusers' IPAdapterPlusImageProjection
    "diffusers": {
        "latents": "latents",
        "proj_in": "proj_in",
        "proj_out": "proj_out",
        "norm_out": "norm_out",
        "blocks": "layers",
        "norm1": "ln0",
        "norm2": "ln1",
        "to_q": "attn.to_q",
        "to_k": "attn.to_k",
        "to_v": "attn.to_v",
        "to_out": "attn.to_out.0",
        "ff_norm": "ff.0",
        "ff_in": "ff.1.net.0.proj",
        "ff_out": "ff.1.net.2",
    },
    # Hugging Face style names, latents [N, d]: no convention for the head width
    "hf": {
        "latents": "queries",
        "proj_in": "input_proj",
        "proj_out": "output_proj",
        "norm_out": "output_norm",
        "blocks": "blocks",
        "norm1": "norm_media",
        "norm2": "norm_latents",
        "to_q": "attn.q_proj",
        "to_k": "attn.k_proj",
        "to_v": "attn.v_proj",
        "to_out": "attn.out_proj",
        "ff_norm": "mlp.norm",
        "ff_in": "mlp.fc1",
        "ff_out": "mlp.fc2",
    },
}
_OUR_BLOCK = {
    "norm1": "0.norm1",
    "norm2": "0.norm2",
    "to_q": "0.to_q",
    "to_out": "0.to_out",
    "ff_norm": "1.0",
    "ff_in": "1.1",
    "ff_out": "1.3",
}

#: diffusers attention-processor sites in diffusers order (down, up, mid): string order differs
#: (mid before up, transformer block 10 before 2), so a loader sorting names as text is caught.
DIFFUSERS_SITES = (
    [f"down_blocks.1.attentions.{a}.transformer_blocks.{t}" for a in (0, 1) for t in (0, 1)]
    + [f"down_blocks.2.attentions.0.transformer_blocks.{t}" for t in range(12)]
    + [f"up_blocks.0.attentions.{a}.transformer_blocks.{t}" for a in range(3) for t in (0, 1)]
    + ["mid_block.attentions.0.transformer_blocks.0", "mid_block.attentions.0.transformer_blocks.1"]
)
DIFFUSERS_DIMS = tuple(64 if i % 3 else 32 for i in range(len(DIFFUSERS_SITES)))


def processor_name(i: int, role: str, suffix: str = "") -> str:
    """diffusers' name of layer i's IP-Adapter weight: '<site>.attn2.processor.to_k_ip<suffix>.weight'."""
    return f"{DIFFUSERS_SITES[i]}.attn2.processor.to_{role}_ip{suffix}.weight"


def renamed_state(adapter: NestedAdapter, prefix: str, naming: str, pair_name) -> dict[str, torch.Tensor]:
    """The adapter's tensors with the Q-Former under ``prefix`` in ``naming`` (RESAMPLER_NAMINGS) and
    layer i's projections named ``pair_name(i, "k" or "v")``."""
    state = {name: tensor.clone() for name, tensor in adapter.state_dict().items()}
    names = RESAMPLER_NAMINGS[naming]

    def at(path: str) -> str:
        return f"{prefix}.{path}" if prefix else path

    latents = state["qformer.latents"]
    out = {at(names["latents"]): latents[0] if naming == "hf" else latents}
    for role in ("proj_in", "proj_out", "norm_out"):
        for kind in ("weight", "bias"):
            out[at(f"{names[role]}.{kind}")] = state[f"qformer.{role}.{kind}"]
    for j in range(adapter.config.qformer.depth):
        block = at(f"{names['blocks']}.{j}")
        for role, ours in _OUR_BLOCK.items():
            for kind in ("weight", "bias"):
                if f"qformer.layers.{j}.{ours}.{kind}" in state:
                    out[f"{block}.{names[role]}.{kind}"] = state[f"qformer.layers.{j}.{ours}.{kind}"]
        keys, values = state[f"qformer.layers.{j}.0.to_kv.weight"].chunk(2)
        out[f"{block}.{names['to_k']}.weight"] = keys.clone()
        out[f"{block}.{names['to_v']}.weight"] = values.clone()
    for i in range(len(adapter.config.layer_dims)):
        out[pair_name(i, "k")] = state[f"nested.{i}.to_k.weight"]
        out[pair_name(i, "v")] = state[f"nested.{i}.to_v.weight"]
    return out


def nest(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"a.b.c": t} -> {"a": {"b.c": t}}: a state dict saved one level down, as many training scripts do."""
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        group, rest = name.split(".", 1)
        nested.setdefault(group, {})[rest] = tensor
    return nested
