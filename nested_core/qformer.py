"""The subject encoder: a Perceiver-style Q-Former over CLIP vision patch features.

Learned queries ("latents") attend to the penultimate-layer hidden states of a CLIP vision
model (all patches plus the class token). Each layer is an attention block, whose keys and values
are the image features concatenated with the normalised latents, followed by a feed-forward
block, both residual. An output projection to the UNet's context width and a LayerNorm give the
subject tokens, one per query.

Module names mirror the public IP-Adapter-Plus ``image_proj`` layout, so those state dicts load
unchanged: ``latents``, ``proj_in``, ``layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}``,
``layers.{i}.1.{0,1,3}`` (LayerNorm, Linear, GELU, Linear), ``proj_out``, ``norm_out``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .heads import split_heads

#: Layer classes used to build the modules. ComfyUI passes ``comfy.ops.manual_cast`` here so
#: weights are cast to the input's dtype and device at call time.
TORCH_OPS = SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm)


@dataclass(frozen=True)
class QFormerConfig:
    """Hyperparameters of the Q-Former; the defaults are IP-Adapter-Plus SDXL (ViT-H)."""

    num_queries: int = 16  # learned queries = nested tokens per subject
    dim: int = 1280  # width of the latents
    depth: int = 4  # attention + feed-forward layers
    heads: int = 20
    head_dim: int = 64
    ff_mult: int = 4
    in_dim: int = 1280  # CLIP vision hidden width (1280 for ViT-H/14)
    out_dim: int = 2048  # UNet cross-attention (context) width

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QFormerConfig":
        if not isinstance(data, dict):
            raise ValueError(f"expected an object of settings, found {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown Q-Former settings {sorted(unknown)}")
        values = {}
        for name, value in data.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Q-Former setting {name}={value!r} must be a positive integer")
            values[name] = value
        return cls(**values)


class PerceiverAttention(nn.Module):
    """Latents attend to [image features; latents]."""

    def __init__(self, config: QFormerConfig, ops: Any = TORCH_OPS, device=None, dtype=None):
        super().__init__()
        inner = config.heads * config.head_dim
        self.heads = config.heads
        self.norm1 = ops.LayerNorm(config.dim, device=device, dtype=dtype)
        self.norm2 = ops.LayerNorm(config.dim, device=device, dtype=dtype)
        self.to_q = ops.Linear(config.dim, inner, bias=False, device=device, dtype=dtype)
        self.to_kv = ops.Linear(config.dim, inner * 2, bias=False, device=device, dtype=dtype)
        self.to_out = ops.Linear(inner, config.dim, bias=False, device=device, dtype=dtype)

    def forward(self, features: Tensor, latents: Tensor) -> tuple[Tensor, Tensor]:
        """features: [B, P, dim], latents: [B, Q, dim] -> (update [B, Q, dim], attention [B, H, Q, P+Q])"""
        features = self.norm1(features)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attention = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
        out = (attention @ v).transpose(1, 2).flatten(2)
        return self.to_out(out), attention


class QFormer(nn.Module):
    """CLIP patch features [B, P, in_dim] -> subject tokens [B, num_queries, out_dim]."""

    def __init__(self, config: QFormerConfig, ops: Any = TORCH_OPS, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(
            torch.randn(1, config.num_queries, config.dim, device=device, dtype=dtype) / config.dim**0.5
        )
        self.proj_in = ops.Linear(config.in_dim, config.dim, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(config, ops, device, dtype), _feed_forward(config, ops, device, dtype)])
            for _ in range(config.depth)
        )
        self.proj_out = ops.Linear(config.dim, config.out_dim, device=device, dtype=dtype)
        self.norm_out = ops.LayerNorm(config.out_dim, device=device, dtype=dtype)

    def forward(self, features: Tensor, attention_maps: Optional[list[Tensor]] = None) -> Tensor:
        """Encode CLIP features; when ``attention_maps`` is a list, each layer's attention
        ``[B, heads, Q, P + Q]`` (over the features, then the latents) is appended to it."""
        x = self.proj_in(features)
        latents = self.latents.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        for attention, feed_forward in self.layers:
            update, weights = attention(x, latents)
            latents = latents + update
            latents = latents + feed_forward(latents)
            if attention_maps is not None:
                attention_maps.append(weights)
        return self.norm_out(self.proj_out(latents))


def _feed_forward(config: QFormerConfig, ops: Any, device, dtype) -> nn.Sequential:
    hidden = config.dim * config.ff_mult
    return nn.Sequential(
        ops.LayerNorm(config.dim, device=device, dtype=dtype),
        ops.Linear(config.dim, hidden, bias=False, device=device, dtype=dtype),
        nn.GELU(),
        ops.Linear(hidden, config.dim, bias=False, device=device, dtype=dtype),
    )
