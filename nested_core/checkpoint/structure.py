"""Adapter files of unknown names, recognised by their structure: a resampler plus key/value pairs.

The last resort of the loader, after the native and IP-Adapter-Plus layouts. A file is read as a
nested adapter when it holds exactly one Perceiver resampler (``resampler.py``, found by shapes
whatever its names) and, beside it, one key/value projection pair per cross-attention layer
(``pairs.py``, ordered by diffusers processor names or by index). The hyperparameters are read off
shapes; the one they cannot show, the resampler's head count, comes from the file's metadata when
stated, else from the convention of resamplers whose projections are named to_q/to_kv/to_out
(IP-Adapter, diffusers: head width 64). Anything that fits two readings is refused with both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..adapter import AdapterConfig, family_of_context_dim
from ..errors import AdapterFileError
from ..qformer import QFormerConfig
from .names import pattern, shape_text
from .pairs import Pairs, read_pairs
from .reader import RawCheckpoint
from .resampler import Resampler, find_resamplers
from .schema import check_names_and_shapes, inspect_hint, load_finite, shape_of, whole_number

log = logging.getLogger(__name__)

FILE_LAYOUT = "recognised by structure"
LAYOUT_LABEL = "structurally recognised"  # in messages: "every tensor of the structurally recognised layout"
CONVENTIONAL_HEAD_DIM = 64
EXPECTED = (
    "one Perceiver resampler (latents, input and output projections, attention and feed-forward blocks) "
    "and one key/value projection pair per cross-attention layer"
)
_HEADS_KEYS = ("heads", "num_heads", "n_heads")
_HEAD_DIM_KEYS = ("head_dim", "dim_head", "head_width")
#: Our Q-Former's name of each block role (IP-Adapter-Plus naming).
_OUR_BLOCK_NAMES = {
    "norm1": "0.norm1",
    "norm2": "0.norm2",
    "to_q": "0.to_q",
    "to_kv": "0.to_kv",
    "to_out": "0.to_out",
    "ff_norm": "1.0",
    "ff_in": "1.1",
    "ff_out": "1.3",
}


class NoResampler(Exception):
    """Nothing in the file reads as a resampler; ``nearest`` says what came closest, if anything did."""

    def __init__(self, nearest: Optional[str]):
        super().__init__(nearest or "no resampler")
        self.nearest = nearest


@dataclass(frozen=True)
class Recognition:
    """How a file was read, for AdapterCheckpoint, logs and the inspect command."""

    summary: str  # "recognised by structure: resampler 'resampler.*', 70 layers by diffusers names"
    groups: tuple[str, ...]  # the file's tensor groups
    notes: tuple[str, ...]  # how the settings were read
    layer_sources: tuple[str, ...]  # where the weights of nested layer i came from


def recognise(raw: RawCheckpoint, heads: Optional[int] = None) -> tuple[AdapterConfig, dict[str, Tensor], Recognition]:
    """Read ``raw`` by structure. NoResampler when nothing in it is close to a resampler (the caller says what
    the file is), AdapterFileError when something is but cannot be read unambiguously. ``heads`` overrides
    the resampler's head count."""
    hint = inspect_hint(raw.path)
    found, misses = find_resamplers(raw.info)
    if not found:
        close = [m for m in misses if m.close]
        if not close:
            raise NoResampler(max(misses, key=lambda m: m.size).reason if misses else None)
        miss = max(close, key=lambda m: m.size)
        raise AdapterFileError(raw.path, f"a resampler-like group that cannot be read: {miss.reason}", EXPECTED, hint)
    if len(found) > 1:
        groups = "; ".join(f"{pattern(r.prefix)} ({len(r.tensors)} tensors, {r.depth} blocks)" for r in found)
        raise AdapterFileError(
            raw.path, f"{len(found)} groups that could each be the resampler: {groups}", "exactly one resampler", hint
        )
    resampler = found[0]
    pairs = read_pairs(raw, [name for name in raw.info if name not in resampler.tensors], hint)
    head_count, head_dim, how = _heads(raw, resampler, heads, hint)
    if resampler.hidden % resampler.dim:
        raise AdapterFileError(
            raw.path,
            f"a feed-forward width of {resampler.hidden} for a resampler width of {resampler.dim}",
            "a multiple of the resampler width",
            hint,
        )
    qformer = QFormerConfig(
        num_queries=resampler.num_queries,
        dim=resampler.dim,
        depth=resampler.depth,
        heads=head_count,
        head_dim=head_dim,
        ff_mult=resampler.hidden // resampler.dim,
        in_dim=resampler.in_dim,
        out_dim=resampler.out_dim,
    )
    widths = tuple(shape_of(raw, pair.key, 2, LAYOUT_LABEL)[0] for pair in pairs.layers)
    config = AdapterConfig(qformer=qformer, layer_dims=widths, base_family=family_of_context_dim(qformer.out_dim))
    check_names_and_shapes(raw, _expected_shapes(resampler, pairs, qformer, raw), LAYOUT_LABEL)
    state = _state_dict(resampler, pairs, load_finite(raw))
    recognition = _report(resampler, pairs, head_count, head_dim, how)
    log.info("%s: %s; %s", raw.path, recognition.summary, _order_text(recognition.layer_sources))
    return config, state, recognition


def _heads(raw: RawCheckpoint, resampler: Resampler, given: Optional[int], hint: str) -> tuple[int, int, str]:
    """(heads, head width, where they came from): given > stated in the metadata > the naming's convention."""
    inner = resampler.inner
    stated_heads, stated_dim, where = _stated(raw, hint)
    if given is not None:
        heads, how = given, f"given ({given} heads)"
    elif stated_heads is not None:
        heads, how = stated_heads, f"stated in the metadata ({where})"
    elif stated_dim is not None:
        heads, how = (inner // stated_dim if inner % stated_dim == 0 else 0), f"stated in the metadata ({where})"
    elif resampler.to_names and inner % CONVENTIONAL_HEAD_DIM == 0:
        heads = inner // CONVENTIONAL_HEAD_DIM
        how = (
            f"head width {CONVENTIONAL_HEAD_DIM} by convention: resamplers named to_q/to_kv/to_out "
            "(IP-Adapter, diffusers) use it; the file does not state it"
        )
    else:
        reason = (
            f"the width is not a multiple of the conventional head width {CONVENTIONAL_HEAD_DIM}"
            if resampler.to_names
            else "its projections are not named like IP-Adapter's (to_q/to_kv/to_out), so no head width is conventional"
        )
        raise AdapterFileError(
            raw.path,
            f"a resampler attention width of {inner}, which splits into {_candidates(inner)} (heads x head width); "
            f"the file does not state the head count, and {reason}",
            "the head count stated in the metadata ('heads' or 'head_dim')",
            f"Read the head count off the release's code, then convert the file: 'python -m nested_core.convert "
            f'"{raw.path}" OUT.safetensors --heads N\'. {hint}',
        )
    conflict = stated_dim is not None and given is None and heads * stated_dim != inner
    if heads <= 0 or inner % heads or conflict:
        said = f"head width {stated_dim}" if stated_dim is not None and given is None else f"{heads} heads"
        raise AdapterFileError(
            raw.path,
            f"{said} ({how}) for a resampler attention width of {inner}",
            f"heads x head width = {inner}: {_candidates(inner)}",
            hint,
        )
    return heads, inner // heads, how


def _stated(raw: RawCheckpoint, hint: str) -> tuple[Optional[int], Optional[int], str]:
    """Head count and head width stated in the metadata, at the top level or in a JSON object one level down."""
    found: dict[str, dict[str, int]] = {"heads": {}, "head_dim": {}}
    for key, text in raw.metadata.items():
        if key in _HEADS_KEYS + _HEAD_DIM_KEYS:
            value = whole_number(text)
            if not value:
                raise AdapterFileError(raw.path, f"metadata {key}={text!r}", "a positive integer", hint)
            found["heads" if key in _HEADS_KEYS else "head_dim"][key] = value
        elif text.lstrip().startswith("{"):
            try:
                settings = json.loads(text)
            except (ValueError, RecursionError):
                continue
            for inner_key, value in settings.items() if isinstance(settings, dict) else ():
                if inner_key in _HEADS_KEYS + _HEAD_DIM_KEYS:
                    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                        raise AdapterFileError(
                            raw.path, f"metadata {key}.{inner_key}={value!r}", "a positive integer", hint
                        )
                    found["heads" if inner_key in _HEADS_KEYS else "head_dim"][f"{key}.{inner_key}"] = value
    for kind, values in found.items():
        if len(set(values.values())) > 1:
            stated = ", ".join(f"{k}={v}" for k, v in values.items())
            raise AdapterFileError(raw.path, f"conflicting metadata ({stated})", f"one {kind} value", hint)
    heads = next(iter(found["heads"].values()), None)
    head_dim = next(iter(found["head_dim"].values()), None)
    where = ", ".join(f"{k}={v}" for values in found.values() for k, v in values.items())
    return heads, head_dim, where


def _candidates(inner: int) -> str:
    widths = [w for w in range(8, min(inner, 256) + 1, 8) if inner % w == 0] or [
        w for w in range(1, inner + 1) if inner % w == 0
    ]
    shown = [f"{inner // w} x {w}" for w in reversed(widths)][:8]
    return ", ".join(shown) + (", ..." if len(widths) > 8 else "")


def _expected_shapes(
    resampler: Resampler, pairs: Pairs, q: QFormerConfig, raw: RawCheckpoint
) -> dict[str, tuple[int, ...]]:
    """Every tensor the reading uses, with the shape the settings give it (the file is then checked against it)."""
    inner, hidden = q.heads * q.head_dim, q.dim * q.ff_mult
    shapes = {resampler.latents.weight: resampler.latents.shape}
    outer = {"proj_in": ((q.dim, q.in_dim), (q.dim,)), "proj_out": ((q.out_dim, q.dim), (q.out_dim,))}
    outer["norm_out"] = ((q.out_dim,), (q.out_dim,))
    for role, module in resampler.outer.items():
        shapes[module.weight], shapes[module.bias] = outer[role]
    block = {
        "to_q": (inner, q.dim),
        "to_kv": (2 * inner, q.dim),
        "to_k": (inner, q.dim),
        "to_v": (inner, q.dim),
        "to_out": (q.dim, inner),
        "ff_in": (hidden, q.dim),
        "ff_out": (q.dim, hidden),
    }
    for modules in resampler.blocks:
        for role, module in modules.items():
            if role in block:
                shapes[module.weight] = block[role]
            else:  # a LayerNorm
                shapes[module.weight] = shapes[module.bias] = (q.dim,)
    for pair in pairs.layers:
        width = raw.info[pair.key].shape[:1]
        shapes[pair.key] = shapes[pair.value] = (*width, q.out_dim)
    return shapes


def _state_dict(resampler: Resampler, pairs: Pairs, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The NestedAdapter state dict: the resampler under our Q-Former names, the pairs as nested.{i}."""
    latents = tensors[resampler.latents.weight]
    state = {"qformer.latents": latents.reshape(1, *latents.shape[-2:])}
    for role, module in resampler.outer.items():
        state[f"qformer.{role}.weight"] = tensors[module.weight]
        state[f"qformer.{role}.bias"] = tensors[module.bias]
    for j, modules in enumerate(resampler.blocks):
        for role, module in modules.items():
            if role in ("to_k", "to_v"):
                continue
            ours = f"qformer.layers.{j}.{_OUR_BLOCK_NAMES[role]}"
            state[f"{ours}.weight"] = tensors[module.weight]
            if module.bias is not None:
                state[f"{ours}.bias"] = tensors[module.bias]
        if "to_k" in modules:  # keys first, then values, as to_kv(...).chunk(2) reads them
            state[f"qformer.layers.{j}.0.to_kv.weight"] = torch.cat(
                [tensors[modules["to_k"].weight], tensors[modules["to_v"].weight]]
            )
    for i, pair in enumerate(pairs.layers):
        state[f"nested.{i}.to_k.weight"] = tensors[pair.key]
        state[f"nested.{i}.to_v.weight"] = tensors[pair.value]
    return state


def _report(resampler: Resampler, pairs: Pairs, heads: int, head_dim: int, how: str) -> Recognition:
    count = len(pairs.layers)
    order = "by diffusers names" if pairs.order == "by diffusers names" else f"by index {pairs.naming}"
    summary = f"{FILE_LAYOUT}: resampler {pattern(resampler.prefix)}, {count} layers {order}"
    groups = (
        f"resampler {pattern(resampler.prefix)}: {len(resampler.tensors)} tensors",
        f"key/value pairs {pairs.naming}: {2 * count} tensors",
    )
    notes = [resampler.describe()]
    if not resampler.fused_kv:
        notes.append("the resampler's separate to_k and to_v are concatenated into to_kv (keys first)")
    if len(resampler.latents.shape) == 2:
        notes.append(f"latents {shape_text(resampler.latents.shape)} read as [1, N, d]")
    notes.append(f"heads: {heads} x head width {head_dim} ({how})")
    notes.append(f"layer order: {pairs.order} ({count} layers, diffusers processor order)")
    return Recognition(summary, groups, tuple(notes), tuple(p.source for p in pairs.layers))


def _order_text(sources: tuple[str, ...], limit: int = 3) -> str:
    shown = [f"{i} <- {s}" for i, s in enumerate(sources)]
    if len(shown) > 2 * limit:
        shown = shown[:limit] + ["..."] + shown[-limit:]
    return "layer order " + ", ".join(shown)
