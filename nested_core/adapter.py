"""The nested adapter: the Q-Former plus one nested key/value projection pair per attn2 layer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .layers import LayerKey
from .qformer import TORCH_OPS, QFormer, QFormerConfig


@dataclass(frozen=True)
class AdapterConfig:
    """Everything needed to rebuild an adapter and to check it against a model.

    ``layer_dims[i]`` is the width (heads * head width) of layer i in diffusers order;
    ``layer_keys[i]`` its ComfyUI attn2 key when the file says so (native files), else None and
    the keys come from the model at apply time (see ``layers.bind_layers``).
    """

    qformer: QFormerConfig
    layer_dims: tuple[int, ...]
    layer_keys: Optional[tuple[LayerKey, ...]] = None
    base_family: str = "custom"  # "sd15", "sdxl" or "custom": a label for messages
    class_word: str = ""  # the word the adapter was trained with, e.g. "person"

    @property
    def num_tokens(self) -> int:
        return self.qformer.num_queries

    @property
    def context_dim(self) -> int:
        return self.qformer.out_dim

    @property
    def clip_vision_width(self) -> int:
        return self.qformer.in_dim

    def with_layer_keys(self, keys: tuple[LayerKey, ...]) -> "AdapterConfig":
        if len(keys) != len(self.layer_dims):
            raise ValueError(f"{len(keys)} layer keys for {len(self.layer_dims)} layers")
        return replace(self, layer_keys=keys)

    def describe(self) -> str:
        q = self.qformer
        return (
            f"{self.base_family} adapter: {q.num_queries} nested tokens, {len(self.layer_dims)} layers, "
            f"CLIP vision width {q.in_dim}, context width {q.out_dim}"
            + (f", class word '{self.class_word}'" if self.class_word else "")
        )


def family_of_context_dim(context_dim: int) -> str:
    """A label for messages: 768 is SD1.5's text width, 2048 SDXL's."""
    return {768: "sd15", 2048: "sdxl"}.get(context_dim, "custom")


class NestedKV(nn.Module):
    """Projects subject tokens to one layer's nested keys K~ and values V~ (no bias)."""

    def __init__(self, context_dim: int, inner_dim: int, ops: Any = TORCH_OPS, device=None, dtype=None):
        super().__init__()
        self.to_k = ops.Linear(context_dim, inner_dim, bias=False, device=device, dtype=dtype)
        self.to_v = ops.Linear(context_dim, inner_dim, bias=False, device=device, dtype=dtype)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens [B, N, C] -> (K~, V~), each [B, N, inner]"""
        return self.to_k(tokens), self.to_v(tokens)


class NestedAdapter(nn.Module):
    """Q-Former (``qformer.*``) and per-layer nested projections (``nested.{i}.to_k/to_v``)."""

    def __init__(self, config: AdapterConfig, ops: Any = TORCH_OPS, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.qformer = QFormer(config.qformer, ops, device, dtype)
        self.nested = nn.ModuleList(
            NestedKV(config.context_dim, width, ops, device, dtype) for width in config.layer_dims
        )

    def encode(self, features: Tensor, attention_maps: Optional[list[Tensor]] = None) -> Tensor:
        """CLIP penultimate hidden states [B, P, in_dim] -> subject tokens [B, N, C]."""
        return self.qformer(features, attention_maps)

    def project(self, tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Subject tokens [B, N, C] -> nested (K~, V~) for every layer, in diffusers order."""
        return [layer(tokens) for layer in self.nested]


def fingerprint(config: AdapterConfig, state_dict: dict[str, Tensor]) -> str:
    """A short id of the encoder's function, equal for a file and its converted copy.

    Subjects remember it so a subject is never applied with an adapter whose Q-Former did not
    make its tokens. It hashes the Q-Former settings and three tensors in float32.
    """
    digest = hashlib.sha256(json.dumps(config.qformer.to_dict(), sort_keys=True).encode())
    for name in ("qformer.latents", "qformer.proj_out.weight", "qformer.norm_out.weight"):
        digest.update(state_dict[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_adapter(config: AdapterConfig, state_dict: dict[str, Tensor], ops: Any = TORCH_OPS) -> NestedAdapter:
    """A NestedAdapter holding exactly the given tensors (dtype and device as given).

    The module is built on the meta device and the tensors assigned, so building a large
    adapter costs no random initialisation.
    """
    with torch.device("meta"):
        adapter = NestedAdapter(config, ops)
    adapter.load_state_dict(state_dict, strict=True, assign=True)
    return adapter.eval().requires_grad_(False)
