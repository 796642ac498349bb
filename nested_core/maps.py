"""What nested attention looks at: the quantities behind the paper's analysis figures.

* ``subject_attention``: a_s*, how much each image position attends to the subject's token
  (where the subject lives in the generated image);
* ``nested_token_weights``: softmax(q K~ᵀ/√D), which nested tokens each position draws on;
* ``per_query_values``: v*_q of Eq. 1, the value the token takes at each position;
* ``qformer_patch_maps`` and ``source_heatmap``: through the Q-Former's attention over the CLIP
  patch grid, the region of the reference photo a point of the generated image draws from;
* ``pca_rgb``: value vectors projected to colours, as in the paper's V_q[s*] figure.

Used only when the user asks for maps; sampling never runs this code otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import TokenPositions, prepare_picks, subject_weights
from .heads import merge_heads, split_heads


def subject_attention(q: Tensor, k: Tensor, heads: int, index: Tensor, valid: Tensor) -> Tensor:
    """a_s* = Σ_{p∈P} softmax(q Kᵀ/√D)[p] per batch row and head: [B, H, Lq] (0 for rows without P).

    ``index`` / ``valid`` [B, P] are the positions of s* per row, as in TokenPositions.
    """
    batch = q.shape[0]
    every_row = TokenPositions(index=index, valid=valid, rows=tuple(range(batch)), row_index=torch.arange(batch))
    picks = prepare_picks([every_row], k.shape[1], heads, q.shape[-1] // heads, torch.float32, q.device)
    qh, kh = split_heads(q, heads).float(), split_heads(k, heads).float()
    return subject_weights(qh, kh, picks).sum(-1)  # the same fused form nested_attention uses


def nested_token_weights(q: Tensor, keys: Tensor, heads: int) -> Tensor:
    """softmax(q K~ᵀ/√D) over the N nested tokens: [B, H, Lq, N], float32."""
    nested = split_heads(keys, heads).float()
    logits = split_heads(q, heads).float() @ nested.transpose(-1, -2) / math.sqrt(q.shape[-1] // heads)
    return torch.softmax(logits, dim=-1)


def per_query_values(q: Tensor, keys: Tensor, values: Tensor, heads: int) -> Tensor:
    """v*_q = softmax(q K~ᵀ/√D) V~ with heads merged: [B, Lq, H*D], float32 (Eq. 1)."""
    weights = nested_token_weights(q, keys, heads)
    return merge_heads(weights @ split_heads(values, heads).float().expand(weights.shape[0], -1, -1, -1))


def qformer_patch_maps(attention_maps: Sequence[Tensor], num_tokens: int) -> Tensor:
    """Each learned query's attention over the CLIP patch grid: [M, N, g, g], each map summing to 1.

    ``attention_maps`` are the Q-Former's per-layer weights [M, heads, N, P + N] over
    [features; latents], features = class token + g*g patches. Heads and layers are averaged;
    the class token and the latents are dropped and each map renormalised.
    """
    mean = torch.stack([m.float() for m in attention_maps]).mean(dim=(0, 2))  # [M, N, P + N]
    features = mean.shape[2] - num_tokens  # drop the latents
    if math.isqrt(features - 1) ** 2 == features - 1:
        patches = mean[:, :, 1:features]  # and the class token
    elif math.isqrt(features) ** 2 == features:
        patches = mean[:, :, :features]  # encoders without one
    else:
        raise ValueError(f"{features} CLIP features do not form a square patch grid")
    grid = math.isqrt(patches.shape[2])
    patches = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)
    return patches.reshape(patches.shape[0], patches.shape[1], grid, grid)


def source_heatmap(token_weights: Tensor, patch_maps: Tensor) -> Tensor:
    """Σ_n w_n · map_n: the reference-photo region one generated position draws from.

    token_weights [N] (summing to 1) and patch_maps [N, g, g] (each summing to 1) give [g, g]
    summing to 1.
    """
    return torch.einsum("n,nij->ij", token_weights.float(), patch_maps.float())


def pool_to_grid(per_position: Tensor, height: int, width: int, cells: tuple[int, int]) -> Tensor:
    """[..., h*w] values on a feature map -> [..., gh, gw] cells: averaged where the map is finer
    than the cells, repeated (nearest) where it is coarser, so every layer lands on the same cells."""
    lead = per_position.shape[:-1]
    grid = per_position.reshape(-1, 1, height, width).float()
    pooled = F.adaptive_avg_pool2d(grid, (min(cells[0], height), min(cells[1], width)))
    if tuple(pooled.shape[-2:]) != tuple(cells):
        pooled = F.interpolate(pooled, size=cells, mode="nearest")
    return pooled.reshape(*lead, *cells)


def pca_rgb(vectors: Tensor) -> Tensor:
    """[L, C] vectors -> [L, 3] colours in [0, 1] from their first three principal components."""
    x = vectors.float() - vectors.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    components = x @ v[:3].T if v.shape[0] >= 3 else F.pad(x @ v.T, (0, 3 - v.shape[0]))
    low, high = components.min(0).values, components.max(0).values
    return (components - low) / (high - low).clamp_min(1e-12)
