"""The two ways of injecting a subject that the evaluation compares nested attention with.

Both reuse the nodes' patch and binding machinery and change only how a layer's output is formed:

* decoupled (IP-Adapter style): an extra attention of the image queries over the subject's
  tokens, added to the layer's output: out = plain + w · softmax(q K~ᵀ/√D) V~, where the prompt
  contains the subject's word;
* single-token (PhotoMaker / textual-inversion style): the word's value is replaced by one
  vector, the mean of the nested values, the same for every image position:
  out = plain + w · a_s* (mean V~ − V_s*).

They live here, with the benchmark, not in the nodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nested_attention.nested_core.attention import NestedSubject, nested_attention
from nested_attention.nested_core.heads import merge_heads, split_heads
from nested_attention.nodes.patch import NestedAttn2Patch


class DecoupledAttn2Patch(NestedAttn2Patch):
    def combine(self, q, k, v, heads, bound, base):
        out = base.float()
        for subject in bound.subjects:
            rows = subject.positions.row_index.to(q.device)
            q_rows = split_heads(q.index_select(0, rows), heads)
            keys, values = (
                split_heads(t if t.shape[0] == 1 else t.index_select(0, rows), heads)
                .to(q.dtype)
                .expand(q_rows.shape[0], -1, -1, -1)
                for t in (subject.keys, subject.values)
            )
            extra = merge_heads(F.scaled_dot_product_attention(q_rows, keys, values)).float()
            if subject.query_mask is not None:
                mask = subject.query_mask
                extra = extra * (mask if mask.shape[0] == 1 else mask.index_select(0, rows))[..., None].float()
            out = out.index_add(0, rows, subject.weight * extra)
        return out.to(base.dtype)


class SingleTokenAttn2Patch(NestedAttn2Patch):
    def combine(self, q, k, v, heads, bound, base):
        # zero nested keys make the nested softmax uniform: v*_q = mean of V~ at every position
        flat = [
            NestedSubject(torch.zeros_like(s.keys), s.values, s.positions, s.weight, s.query_mask)
            for s in bound.subjects
        ]
        return nested_attention(q, k, v, heads, flat, base=base, picks=bound.picks, inplace=True)


PATCH_CLASSES: dict[str, type[NestedAttn2Patch]] = {
    "nested": NestedAttn2Patch,
    "decoupled": DecoupledAttn2Patch,
    "single-token": SingleTokenAttn2Patch,
}


def with_variant(model, variant: str):
    """A clone of a model patched by Apply Nested Attention, its attn2 patches swapped for a variant."""
    if variant == "nested":
        return model
    cls = PATCH_CLASSES[variant]
    clone = model.clone()
    replace = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, patch in list(replace.items()):
        if isinstance(patch, NestedAttn2Patch):
            clone.set_model_attn2_replace(cls(patch.layer, patch.wrapped, patch.added), *key)
    return clone
