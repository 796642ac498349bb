"""Nested attention (Patashnik et al. 2025, Eq. 1 and Eq. 3) on already-projected tensors.

Shapes follow ComfyUI's attn2 replacement contract (heads merged in the last axis)::

    q: [B, Lq, H*D]       queries of the image tokens
    k, v: [B, Lctx, H*D]  keys and values of the text context

A subject brings nested keys and values ``K~, V~: [B or 1, N, H*D]`` and the context positions
``P`` of its token s* in each batch row. Per head, with ``a = softmax(q Kᵀ/√D)`` over the context:

    v*_q  = softmax(q K~ᵀ/√D) V~                              (Eq. 1: a value per query)
    out_q = Σ_{t∉P} a_t V_t + Σ_{p∈P} a_p v*_q                 (Eq. 3: keys of s* unchanged)
          = plain_q + Σ_{p∈P} a_p (v*_q − V_p)

The second form is what runs: plain attention plus a correction. ``a_p`` comes from one fused
attention over the context whose values are one-hot columns at the positions P, so no
``[B, H, Lq, Lctx]`` logits and no per-query value matrix ``[B, H, Lq, Lctx, D]`` ever exist; the
extra tensors are ``[R, H, Lq, D]``-sized for the R batch rows that contain a subject token.
Every softmax runs inside PyTorch's scaled_dot_product_attention, whose kernels (flash, memory-
efficient, math and CPU) accumulate it in float32 for half-precision inputs; the correction is
summed in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import merge_heads, split_heads


@dataclass(frozen=True)
class TokenPositions:
    """Where one subject's token s* sits in the context, per batch row.

    ``index[r]`` lists row r's positions (a token may occur several times, and a tiled context
    repeats it), padded to a common length; ``valid[r]`` says which entries are real.
    """

    index: Tensor  # [B, P] long
    valid: Tensor  # [B, P] bool
    rows: tuple[int, ...]  # batch rows with at least one position
    row_index: Tensor  # [len(rows)] long, the same rows on the tensors' device

    @classmethod
    def from_lists(
        cls, per_row: Sequence[Sequence[int]], device: "torch.device | str | None" = None
    ) -> "TokenPositions":
        """Build from one list of context positions per batch row (empty list: no s* in that row)."""
        width = max([len(p) for p in per_row] + [1])
        index = torch.zeros(len(per_row), width, dtype=torch.long)
        valid = torch.zeros(len(per_row), width, dtype=torch.bool)
        for row, positions in enumerate(per_row):
            index[row, : len(positions)] = torch.as_tensor(list(positions), dtype=torch.long)
            valid[row, : len(positions)] = True
        rows = tuple(r for r, p in enumerate(per_row) if len(p) > 0)
        return cls(
            index=index.to(device),
            valid=valid.to(device),
            rows=rows,
            row_index=torch.tensor(rows, dtype=torch.long, device=device),
        )

    @property
    def width(self) -> int:
        return self.index.shape[1]


@dataclass(frozen=True)
class NestedSubject:
    """One subject bound to one token, as the attention function consumes it.

    ``weight`` w interpolates the value of s* between the class word's own value (w = 0: plain
    attention, as if no subject were bound) and the nested per-query value (w = 1: the paper):
    the value used is ``V_p + w·m_q·(v*_q − V_p)``, with ``m_q`` the optional ``query_mask`` in
    [0, 1] (1 everywhere when absent). Weights above 1 extrapolate towards the subject. The key of
    s* is never changed, so the token keeps drawing the attention its class word draws.
    """

    keys: Tensor  # K~: [B or 1, N, H*D]
    values: Tensor  # V~: [B or 1, N, H*D]
    positions: TokenPositions
    weight: float = 1.0
    query_mask: Optional[Tensor] = None  # [B or 1, Lq], where the subject may act


def plain_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Standard multi-head cross-attention on merged heads: [B, Lq, H*D]."""
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
    return merge_heads(out)


def nested_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    subjects: Sequence[NestedSubject],
    base: Optional[Tensor] = None,
) -> Tensor:
    """Cross-attention in which each subject's token s* gets the per-query value of Eq. 1.

    ``base`` is the plain attention output of (q, k, v) when the caller already has it (from
    ComfyUI's kernel or another pack's patch); it is computed here otherwise. The result has q's
    shape and dtype. Rows without subject positions are returned untouched and cost nothing, and
    with no positions at all ``base`` itself is returned. Positions of different subjects must be
    distinct. See the module docstring for the formula.
    """
    if base is None:
        base = plain_attention(q, k, v, heads)
    subjects = [s for s in subjects if s.positions.rows]
    if not subjects:
        return base

    batch = q.shape[0]
    rows, row_index = _union_rows(subjects, batch)
    whole = len(rows) == batch

    def select(t: Tensor) -> Tensor:
        """Keep the rows that carry a subject token (t has B rows, or 1 row that broadcasts)."""
        if t.shape[0] == 1 and batch != 1:
            return t
        return t if whole else t.index_select(0, row_index.to(t.device))

    qh = split_heads(select(q), heads)  # [R, H, Lq, D]
    kh = split_heads(select(k), heads)  # [R, H, Lctx, D]
    index = torch.cat([select(s.positions.index) for s in subjects], dim=1)  # [R, Pt]
    valid = torch.cat([select(s.positions.valid) for s in subjects], dim=1)  # [R, Pt]

    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    weights = weights_at(qh, kh, index, valid).to(acc)  # a_p: [R, H, Lq, Pt]
    v_at = split_heads(_gather_positions(select(v), index), heads).to(acc)  # V_p: [R, H, Pt, D]

    correction = torch.zeros(qh.shape, dtype=acc, device=q.device)
    column = 0
    for subject in subjects:
        width = subject.positions.width
        a = weights[..., column : column + width]  # [R, H, Lq, P]
        v_p = v_at[:, :, column : column + width]  # [R, H, P, D]
        column += width
        nested_k = split_heads(select(subject.keys), heads).to(qh.dtype)
        nested_v = split_heads(select(subject.values), heads).to(qh.dtype)
        v_star = F.scaled_dot_product_attention(  # Eq. 1: [R, H, Lq, D]
            qh, nested_k.expand(qh.shape[0], -1, -1, -1), nested_v.expand(qh.shape[0], -1, -1, -1)
        ).to(acc)
        delta = a.sum(-1, keepdim=True) * v_star - a @ v_p  # Σ_p a_p (v*_q − V_p)
        correction += _scale(subject, select, delta)

    out_rows = (select(base).to(acc) + merge_heads(correction)).to(base.dtype)
    if whole:
        return out_rows
    return base.index_copy(0, row_index.to(base.device), out_rows)


def _union_rows(subjects: Sequence[NestedSubject], batch: int) -> tuple[tuple[int, ...], Tensor]:
    """Rows holding any subject token; reuses the first subject's index tensor when all agree."""
    first = subjects[0].positions
    if all(s.positions.rows == first.rows for s in subjects):
        return first.rows, first.row_index
    rows = tuple(sorted(set().union(*(s.positions.rows for s in subjects))))
    return rows, torch.tensor(rows, dtype=torch.long, device=first.index.device)


def weights_at(qh: Tensor, kh: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """Outer attention weights a_p = softmax(q Kᵀ/√D)[p] at the given context positions.

    The values of a fused attention call are one-hot columns at the positions, so the softmax over
    the whole context is normalised inside the kernel without materialising its logits. Columns
    are padded to the head width D, which the fused kernels want for values.
    """
    rows, heads, _, dim = qh.shape
    context = kh.shape[2]
    total = index.shape[1]
    one_hot = F.one_hot(index, context).to(qh.dtype) * valid.unsqueeze(-1).to(qh.dtype)  # [R, Pt, Lctx]
    picks = one_hot.transpose(1, 2)  # [R, Lctx, Pt]
    blocks = []
    for start in range(0, total, dim):
        block = picks[..., start : start + dim]
        width = block.shape[-1]
        if width < dim:
            block = F.pad(block, (0, dim - width))
        values = block.unsqueeze(1).expand(rows, heads, context, dim)
        blocks.append(F.scaled_dot_product_attention(qh, kh, values)[..., :width])
    return torch.cat(blocks, dim=-1)


def _gather_positions(v: Tensor, index: Tensor) -> Tensor:
    """v[r, index[r, j], :] -> [R, Pt, H*D]"""
    return torch.gather(v, 1, index.unsqueeze(-1).expand(-1, -1, v.shape[-1]))


def _scale(subject: NestedSubject, select, delta: Tensor) -> Tensor:
    """Apply the subject's weight and query mask to its correction [R, H, Lq, D]."""
    if subject.query_mask is None:
        return delta * subject.weight if subject.weight != 1.0 else delta
    mask = select(subject.query_mask).to(device=delta.device, dtype=delta.dtype)  # [R|1, Lq]
    return delta * (mask[:, None, :, None] * subject.weight)
