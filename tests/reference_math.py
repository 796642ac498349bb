"""Naive float64 references, written for clarity, not speed. Tests compare the fast code to them."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def nested_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    subjects: Sequence[dict],
) -> Tensor:
    """Eq. 1 and Eq. 3 literally: every query builds its own value matrix.

    Each subject is a dict with ``keys``/``values`` [B or 1, N, H*D], ``positions`` (one list of
    context positions per batch row), ``weight`` and optional ``mask`` [B or 1, Lq]. For query i
    of row b and head h, the value rows at the subject's positions are replaced by
    V_p + w·m_i·(v*_i − V_p), where v*_i = softmax(q_i K~ᵀ/√D) V~.
    """
    q, k, v = (t.double() for t in (q, k, v))
    batch, queries, width = q.shape
    dim = width // heads
    out = torch.zeros(batch, queries, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            qh, kh, vh = q[b, :, cols], k[b, :, cols], v[b, :, cols]
            weights = torch.softmax(qh @ kh.T / math.sqrt(dim), dim=-1)  # [Lq, Lctx]
            for i in range(queries):
                values = vh.clone()  # V_q: [Lctx, D]
                for s in subjects:
                    nk = s["keys"][b if s["keys"].shape[0] > 1 else 0, :, cols].double()
                    nv = s["values"][b if s["values"].shape[0] > 1 else 0, :, cols].double()
                    v_star = torch.softmax(qh[i] @ nk.T / math.sqrt(dim), dim=-1) @ nv  # Eq. 1
                    mask = s.get("mask")
                    m = 1.0 if mask is None else float(mask[b if mask.shape[0] > 1 else 0, i])
                    for p in s["positions"][b]:
                        values[p] = vh[p] + s.get("weight", 1.0) * m * (v_star - vh[p])
                out[b, i, cols] = weights[i] @ values  # Eq. 3
    return out


def plain_attention_reference(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    return nested_attention_reference(q, k, v, heads, [])


def resampler_reference(state: dict[str, Tensor], features: Tensor, heads: int) -> Tensor:
    """IP-Adapter-Plus's resampler, from its published description, on a raw ``image_proj`` dict.

    Scaling as the original writes it: q and k are each multiplied by head_dim^(-1/4) before
    their product; GELU is exact; LayerNorm eps is 1e-5.
    """
    s = {name: t.double() for name, t in state.items()}
    x = features.double() @ s["proj_in.weight"].T + s["proj_in.bias"]
    latents = s["latents"].repeat(x.shape[0], 1, 1)
    depth = len({name.split(".")[1] for name in s if name.startswith("layers.")})

    def norm(t, name):
        return torch.nn.functional.layer_norm(t, t.shape[-1:], s[name + ".weight"], s[name + ".bias"], 1e-5)

    for i in range(depth):
        p = f"layers.{i}."
        xn, ln = norm(x, p + "0.norm1"), norm(latents, p + "0.norm2")
        query = ln @ s[p + "0.to_q.weight"].T
        kv = torch.cat([xn, ln], dim=1) @ s[p + "0.to_kv.weight"].T
        key, value = kv.chunk(2, dim=-1)

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        query, key, value = split(query), split(key), split(value)
        scale = 1 / math.sqrt(math.sqrt(query.shape[-1]))
        attention = torch.softmax((query * scale) @ (key * scale).transpose(-2, -1), dim=-1)
        mixed = (attention @ value).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        latents = latents + mixed @ s[p + "0.to_out.weight"].T
        hidden = norm(latents, p + "1.0") @ s[p + "1.1.weight"].T
        latents = latents + torch.nn.functional.gelu(hidden) @ s[p + "1.3.weight"].T
    out = latents @ s["proj_out.weight"].T + s["proj_out.bias"]
    return norm(out, "norm_out")
