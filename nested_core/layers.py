"""Cross-attention layer ids and their two orders.

A layer is addressed by its ComfyUI attn2 key ``(block, number, depth)``: ``block`` is
``"input"``, ``"middle"`` or ``"output"``, ``number`` the UNet block index (always 0 for the
middle block) and ``depth`` the transformer-block index inside that block's SpatialTransformer.

Adapter checkpoints store their per-layer projections in diffusers' attention-processor order:
every down (input) block ascending, then every up (output) block ascending, then the mid block;
depth ascending inside a block. IP-Adapter files number layer ``i`` of that order ``2*i + 1``.
Both orders are derived from whatever layer list a model has, never from a table per model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence

from .errors import NestedAttentionError

log = logging.getLogger(__name__)

_BLOCK_RANK = {"input": 0, "output": 1, "middle": 2}  # diffusers: down, up, mid
_KEY_PATTERN = re.compile(r"^(input|middle|output)\.(\d+)\.(\d+)$")


class LayerKey(NamedTuple):
    """One attn2 site, spelled exactly like ComfyUI's ``set_model_attn2_replace`` key."""

    block: str
    number: int
    depth: int

    def __str__(self) -> str:
        return f"{self.block}.{self.number}.{self.depth}"

    @classmethod
    def parse(cls, text: str) -> "LayerKey":
        """Parse ``"input.4.1"`` into ``LayerKey("input", 4, 1)``."""
        match = _KEY_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"layer id {text!r} is not of the form 'input|middle|output.<number>.<depth>'")
        return cls(match.group(1), int(match.group(2)), int(match.group(3)))


def diffusers_order(keys: Iterable[LayerKey]) -> list[LayerKey]:
    """Sort attn2 keys into diffusers' attention-processor order (down, up, mid; depth ascending)."""
    return sorted(keys, key=lambda k: (_BLOCK_RANK[k.block], k.number, k.depth))


def ip_adapter_number(index: int) -> int:
    """The ``ip_adapter.{n}`` number IP-Adapter files give to layer ``index`` of diffusers order."""
    return 2 * index + 1


@dataclass(frozen=True)
class SiteShape:
    """What the adapter must match at one attn2 site of a model."""

    inner_dim: int  # heads * head width of the layer (output width of to_k / to_v)
    context_dim: int  # width of the text context the layer attends to


@dataclass(frozen=True)
class LayerBinding:
    """Which adapter layer serves which model site, and what could not be matched."""

    index_of: Mapping[LayerKey, int]  # model site -> adapter layer index
    unserved: tuple[LayerKey, ...]  # model sites the adapter has no weights for (skipped)
    unused: tuple[str, ...]  # adapter layers the model does not have


def bind_layers(
    adapter_name: str,
    adapter_dims: Sequence[int],
    adapter_context_dim: int,
    adapter_keys: Optional[Sequence[LayerKey]],
    sites: Mapping[LayerKey, SiteShape],
) -> LayerBinding:
    """Map a model's attn2 sites onto an adapter's layers, or explain why they do not fit.

    With layer ids in the adapter (native files) sites are matched by id; sites without weights
    are skipped and reported by the caller. Without ids (IP-Adapter files) the adapter's layers
    are taken to be the model's sites in diffusers order, which needs the same count.
    """
    if not sites:
        raise NestedAttentionError("the model has no cross-attention (attn2) layers to patch")
    ordered = diffusers_order(sites)
    widths = sorted({sites[k].context_dim for k in ordered})
    if widths != [adapter_context_dim]:
        raise NestedAttentionError(
            f"adapter '{adapter_name}' was built for a text context of width {adapter_context_dim} "
            f"with {len(adapter_dims)} cross-attention layers; the model's context width is "
            f"{'/'.join(map(str, widths))} with {len(ordered)} layers. Load the adapter made for this "
            "base model family (SD1.5 adapters have width 768, SDXL adapters 2048)."
        )

    if adapter_keys is None:
        if len(adapter_dims) != len(ordered):
            raise NestedAttentionError(
                f"adapter '{adapter_name}' has {len(adapter_dims)} cross-attention layers and no layer "
                f"ids; the model has {len(ordered)}. Such files can only be matched to a model with "
                "the same layer count (the base model they were trained for)."
            )
        index_of = {key: i for i, key in enumerate(ordered)}
        unused: tuple[str, ...] = ()
    else:
        position = {key: i for i, key in enumerate(adapter_keys)}
        index_of = {key: position[key] for key in ordered if key in position}
        unused = tuple(str(k) for k in adapter_keys if k not in sites)
        if not index_of:
            raise NestedAttentionError(
                f"none of the {len(adapter_keys)} layers of adapter '{adapter_name}' "
                f"(e.g. {adapter_keys[0]}) exists in the model, whose layers are e.g. {ordered[0]}"
            )

    for key, index in index_of.items():
        if adapter_dims[index] != sites[key].inner_dim:
            raise NestedAttentionError(
                f"adapter '{adapter_name}' layer {index} has width {adapter_dims[index]} but the "
                f"model's layer {key} has width {sites[key].inner_dim}: the adapter was built for "
                "another base model"
            )
    unserved = tuple(key for key in ordered if key not in index_of)
    return LayerBinding(index_of=index_of, unserved=unserved, unused=unused)
