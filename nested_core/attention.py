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
attention over the context whose values are one-hot columns at the positions P (``ContextPicks``,
built once per prompt layout and layer shape and reused by every layer and step), so no
``[B, H, Lq, Lctx]`` logits and no per-query value matrix ``[B, H, Lq, Lctx, D]`` ever exist; the
extra tensors are ``[R, H, Lq, D]``-sized for the R batch rows that contain a subject token.
Every softmax runs inside PyTorch's scaled_dot_product_attention, whose kernels (flash, memory-
efficient, math and CPU) accumulate it in float32 for half-precision inputs. The correction is
formed in the inputs' dtype and added to the rows of the output that carry a subject, so a layer
call costs a fixed handful of kernels (see ``nested_attention``) and never waits for the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import merge_heads, split_heads

Rows = Union[slice, Tensor]  # batch rows: a slice when they are contiguous (views cost nothing)


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


@dataclass(frozen=True)
class ContextPicks:
    """The subjects' positions in the context, in the form the kernels want, for one layer shape.

    Depends only on the prompt layout, the batch rows, the head count and width, the dtype and the
    subjects, so it is built once per sampling run (``prepare_picks``) and shared by every layer of
    that shape and every step. ``columns[i]`` are subject i's columns in ``blocks`` and ``index``.
    """

    rows: Rows  # the batch rows that carry a subject token (R of them)
    blocks: tuple[Tensor, ...]  # one-hot columns at the positions: [R, H, Lctx, D] each (heads stride 0)
    index: Tensor  # [R, H, Pt, D] long (stride 0 over H and D): the positions, to gather V_p
    columns: tuple[tuple[int, int], ...]  # per subject, [start, stop) among the Pt positions


def prepare_picks(
    positions: Sequence[TokenPositions],
    context: int,
    heads: int,
    dim: int,
    dtype: torch.dtype,
    device: "torch.device | str",
) -> ContextPicks:
    """Everything nested attention needs besides q, k, v and the nested tokens (see ContextPicks).

    Builds its tensors with scatter rather than one_hot, whose range check reads from the device.
    """
    rows = _union_rows(positions)
    index = torch.cat([_take(p.index, rows) for p in positions], dim=1).to(device)  # [R, Pt]
    valid = torch.cat([_take(p.valid, rows) for p in positions], dim=1).to(device)  # [R, Pt]
    count, total = index.shape
    padded = -(-total // dim) * dim  # columns padded to whole head widths: the fused kernels want Dv = D
    picks = torch.zeros(count, context, padded, dtype=dtype, device=device)
    columns = torch.arange(total, device=device).expand(count, total)
    picks[torch.arange(count, device=device)[:, None], index, columns] = valid.to(dtype)  # [R, Lctx, Pt+]
    blocks = tuple(
        picks[..., start : start + dim].unsqueeze(1).expand(count, heads, context, dim)
        for start in range(0, padded, dim)
    )
    bounds, start = [], 0
    for p in positions:
        bounds.append((start, start + p.width))
        start += p.width
    gather = index.view(count, 1, total, 1).expand(count, heads, total, dim)
    return ContextPicks(rows=rows, blocks=blocks, index=gather, columns=tuple(bounds))


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
    picks: Optional[ContextPicks] = None,
    inplace: bool = False,
) -> Tensor:
    """Cross-attention in which each subject's token s* gets the per-query value of Eq. 1.

    Args:
        q, k, v: the layer's projected queries [B, Lq, H*D] and context keys/values [B, Lctx, H*D].
        heads: the layer's head count H.
        subjects: the subjects acting on this call; their positions must be distinct.
        base: the plain attention output of (q, k, v) when the caller already has it (from
            ComfyUI's kernel or another pack's patch); computed here otherwise.
        picks: ``prepare_picks(subjects, ...)`` for these subjects and this layer shape, when the
            caller keeps it between calls; built here otherwise.
        inplace: add the corrections into ``base`` itself (the attn2 patch owns its base output);
            otherwise ``base`` is left as it is and a new tensor is returned.

    The result has q's shape and dtype. Rows without subject positions are returned untouched and
    cost nothing, and with no positions at all ``base`` itself is returned. With ``picks`` given and
    every subject's token once in the prompt, a call runs two fused attentions (the a_p of every
    position, then one v*_q per subject), one gather of the V_p, and per subject a subtraction and
    one fused multiply-add into the output rows (plus one multiply for a query mask).
    """
    if base is None:
        base = plain_attention(q, k, v, heads)
    subjects = [s for s in subjects if s.positions.rows]
    if not subjects:
        return base
    if picks is None:
        dim = q.shape[-1] // heads
        picks = prepare_picks([s.positions for s in subjects], k.shape[1], heads, dim, q.dtype, q.device)
    rows = picks.rows
    qh, kh, vh = (split_heads(_take(t, rows), heads) for t in (q, k, v))  # [R, H, L, D]
    a_all = subject_weights(qh, kh, picks)  # a_p: [R, H, Lq, Pt]
    v_at = torch.gather(vh, 2, picks.index)  # V_p: [R, H, Pt, D]

    out, target = _output_rows(base, rows, heads, inplace)  # target: [R, H, Lq, D], a view into out's rows
    for subject, (start, stop) in zip(subjects, picks.columns):
        nested_k, nested_v = (
            split_heads(_take(t, rows), heads).expand(qh.shape[0], -1, -1, -1) for t in (subject.keys, subject.values)
        )
        v_star = F.scaled_dot_product_attention(qh, nested_k, nested_v)  # Eq. 1: [R, H, Lq, D]
        a, v_p = a_all[..., start:stop], v_at[:, :, start:stop]  # [R, H, Lq, P], [R, H, P, D]
        mask = None if subject.query_mask is None else _take(subject.query_mask, rows)[:, None, :, None]
        if stop - start == 1:  # the word once in the prompt: Σ_p a_p (v*_q − V_p) = a (v*_q − V_p)
            scale = a if mask is None else a * mask.to(a.dtype)
            target.addcmul_(scale, v_star - v_p, value=subject.weight)
        else:  # (Σ_p a_p) v*_q − Σ_p a_p V_p, the second as one batched product
            delta = torch.baddbmm(
                (v_star * a.sum(-1, keepdim=True)).flatten(0, 1), a.flatten(0, 1), v_p.flatten(0, 1), alpha=-1
            ).view_as(v_star)
            if mask is not None:
                delta = delta * mask.to(delta.dtype)
            target.add_(delta, alpha=subject.weight)
    if isinstance(rows, Tensor):  # rows scattered over the batch: the corrections were gathered aside
        out.index_add_(0, rows, target.transpose(1, 2).reshape(target.shape[0], q.shape[1], -1))
    return out


def subject_weights(qh: Tensor, kh: Tensor, picks: ContextPicks) -> Tensor:
    """The outer attention weights a_p = softmax(q Kᵀ/√D)[p] at every position of ``picks``:
    [R, H, Lq, Pt] for the heads-split queries and keys of ``picks.rows``."""
    weights = [F.scaled_dot_product_attention(qh, kh, block) for block in picks.blocks]
    return (weights[0] if len(weights) == 1 else torch.cat(weights, -1))[..., : picks.index.shape[2]]


def _union_rows(positions: Sequence[TokenPositions]) -> Rows:
    """The rows holding any subject token: a slice when contiguous, else an index tensor."""
    rows = sorted(set().union(*(p.rows for p in positions)))
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.long, device=positions[0].index.device)


def _take(t: Tensor, rows: Rows) -> Tensor:
    """The given rows of t (B rows), or t itself when it has one row that broadcasts."""
    if t.shape[0] == 1:
        return t
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows.to(t.device))


def _output_rows(base: Tensor, rows: Rows, heads: int, inplace: bool) -> tuple[Tensor, Tensor]:
    """The output tensor and a [R, H, Lq, D] tensor whose updates land in its subject rows.

    Contiguous rows are a view of the output (in base itself when ``inplace`` and autograd does not
    need base unchanged); scattered rows get a zero tensor that the caller adds back.
    """
    if isinstance(rows, Tensor):
        out = base if inplace and not base.requires_grad else base.clone()
        width = base.shape[-1]
        zeros = torch.zeros(rows.shape[0], base.shape[1], heads, width // heads, dtype=base.dtype, device=base.device)
        return out, zeros.transpose(1, 2)
    out = base if inplace and not base.requires_grad else base.clone()
    return out, split_heads(out[rows], heads)
