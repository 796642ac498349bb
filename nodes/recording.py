"""Opt-in recording of what each subject does during sampling, for the maps node.

"Record Nested Attention" puts a ``Recording`` in the model's transformer options; the attn2
patches hand it the layer's queries, keys and values after computing their output (nothing
happens when no recording is attached). For every subject and latent image it keeps, on the CPU,
per UNet part (input, middle, output) and sampling step, the sum over that part's layers of:

* a_s* averaged over heads, times the subject's region mask: where the subject acts;
* the nested-token weights softmax(q K~ᵀ/√D) averaged over heads: which token each position uses;

each pooled onto a grid of at most ``grid`` x ``grid`` cells (rows of the positive prompts only),
plus one snapshot of the per-query values v*_q and of the word's own value V_s* at one layer and
step. Memory: (1 + N) x grid² floats per subject, image, part and step (16 tokens, 32 x 32 grid,
30 steps: 6.3 MB), plus the layer's width x grid² floats for the snapshot (5 MB for SDXL).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.layers import LayerKey
from ..nested_core.maps import nested_token_weights, per_query_values, pool_to_grid, subject_attention
from .contract import RECORD_KEY, LayerSubjects, SubjectBinding, sigma_of, with_transformer_options
from .masks import layer_grid
from .model_layers import attn2_sites

PARTS = ("input", "middle", "output")


@dataclass
class SubjectTrace:
    """Sums for one subject: maps[(part, step)] = [B, 1 + N, gh, gw] (channel 0: a_s*, then tokens)."""

    name: str
    maps: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    values: Optional[Tensor] = None  # v*_q snapshot [B, inner, gh, gw]
    class_value: Optional[Tensor] = None  # V_s* at that layer and step [inner]


class Recording:
    """The recorder during sampling and the record afterwards; one per Record node execution."""

    def __init__(self, grid: int = 32, value_layer: Optional[LayerKey] = None, value_at: float = 0.5):
        self.grid = grid
        self.value_layer = value_layer
        self.value_at = value_at
        self.steps = 0
        self.cells: Optional[tuple[int, int]] = None
        self._sigmas: Optional[Tensor] = None
        self.traces: dict[int, SubjectTrace] = {}
        self.registry: tuple[SubjectBinding, ...] = ()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "Recording":
        return self  # every clone of the model must write into the same record

    def reset(self, registry: tuple[SubjectBinding, ...]) -> None:
        """Start recording a sampling run of these subjects: the record is the latest run's."""
        with self._lock:
            self.registry = registry
            self.traces.clear()
            self.steps = 0
            self.cells = None
            self._sigmas = None

    def record(
        self,
        layer: LayerKey,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bound: LayerSubjects,
        extra_options: dict[str, Any],
    ) -> None:
        """Add one layer call's maps, for the rows of positive prompts (called by the attn2 patch)."""
        chunks = extra_options.get("cond_or_uncond") or []
        schedule = extra_options.get("sample_sigmas")
        positive = [c for c, kind in enumerate(chunks) if kind == 0]
        if not positive or schedule is None:
            return
        per_chunk = q.shape[0] // len(chunks)
        rows = torch.tensor([c * per_chunk + j for c in positive for j in range(per_chunk)], device=q.device)
        step = self._step(sigma_of(extra_options["sigmas"]), schedule)
        h, w = layer_grid(q.shape[1], extra_options)
        cells = self._cells(extra_options)
        heads = extra_options["n_heads"]

        def pick(t: Tensor) -> Tensor:
            return t if t.shape[0] == 1 else t.index_select(0, rows)

        def per_image(t: Tensor) -> Tensor:
            """[R, C, Lq] on the layer grid -> [B, C, gh, gw]: pooled, and averaged over positive prompts."""
            t = pool_to_grid(t, h, w, cells)
            return t.reshape(len(positive), per_chunk, *t.shape[1:]).mean(0).cpu()

        with torch.no_grad():
            q_rows, k_rows = q.index_select(0, rows), k.index_select(0, rows)
            for index, subject in zip(bound.indices, bound.subjects):
                where = subject.positions.index.index_select(0, rows)
                valid = subject.positions.valid.index_select(0, rows)
                acting = subject_attention(q_rows, k_rows, heads, where, valid).mean(1)  # [R, Lq]
                if subject.query_mask is not None:
                    acting = acting * pick(subject.query_mask).float()
                tokens = nested_token_weights(q_rows, pick(subject.keys), heads).mean(1)  # [R, Lq, N]
                self._add(
                    index,
                    self.registry[index].name,
                    layer.block,
                    step,
                    per_image(torch.cat([acting[:, None], tokens.transpose(1, 2)], dim=1)),
                )
                if self._snapshot_here(layer, step) and bool(valid[0].any()):
                    v_star = per_query_values(q_rows, pick(subject.keys), pick(subject.values), heads)
                    trace = self.traces[index]
                    trace.values = per_image(v_star.transpose(1, 2))
                    trace.class_value = v.index_select(0, rows)[0, int(where[0][valid[0]][0])].float().cpu()

    def _step(self, sigma: float, schedule: Tensor) -> int:
        if self._sigmas is None:  # once per run, not per layer call (a device -> CPU copy)
            self._sigmas = schedule.reshape(-1).float().cpu()
            self.steps = len(self._sigmas) - 1
        return int((self._sigmas[:-1] - sigma).abs().argmin())

    def _cells(self, extra_options: dict[str, Any]) -> tuple[int, int]:
        if self.cells is None:
            height, width = extra_options["original_shape"][2:4]
            if height >= width:
                self.cells = (self.grid, max(1, round(self.grid * width / height)))
            else:
                self.cells = (max(1, round(self.grid * height / width)), self.grid)
        return self.cells

    def _snapshot_here(self, layer: LayerKey, step: int) -> bool:
        if self.value_layer is None and layer.block == "output":
            self.value_layer = layer  # default: the decoder's first cross-attention layer
        return layer == self.value_layer and step == round(self.value_at * max(self.steps - 1, 0))

    def _add(self, index: int, name: str, part: str, step: int, maps: Tensor) -> None:
        with self._lock:
            trace = self.traces.setdefault(index, SubjectTrace(name))
            key = (part, step)
            trace.maps[key] = trace.maps[key] + maps if key in trace.maps else maps
            trace.counts[key] = trace.counts.get(key, 0) + 1

    def averaged(self, index: int, parts: Sequence[str], first_step: int, last_step: int) -> Optional[Tensor]:
        """Mean over the recorded layer calls of the chosen parts and steps: [B, 1 + N, gh, gw]."""
        trace = self.traces.get(index)
        if trace is None:
            return None
        keys = [k for k in trace.maps if k[0] in parts and first_step <= k[1] <= last_step]
        if not keys:
            return None
        return sum(trace.maps[k] for k in keys) / sum(trace.counts[k] for k in keys)


def record_model(model, grid: int, value_layer: str = "", value_at: float = 0.5) -> tuple[Any, Recording]:
    """A clone of ``model`` whose next sampling runs are recorded into the returned Recording.

    ``value_layer`` ("output.0.0"; empty: the decoder's first cross-attention layer) must be one of
    the model's attn2 layers.
    """
    layer = None
    if value_layer.strip():
        try:
            layer = LayerKey.parse(value_layer)
        except ValueError as error:
            raise NestedAttentionError(f"Record Nested Attention: value_layer: {error}") from error
        sites = attn2_sites(model)
        if layer not in sites:
            raise NestedAttentionError(
                f"Record Nested Attention: the model has no layer {layer}; it has "
                f"{', '.join(map(str, list(sites)[:4]))}, ..."
            )
    recording = Recording(grid=grid, value_layer=layer, value_at=value_at)
    patched = model.clone()
    patched.model_options = with_transformer_options(patched.model_options, {RECORD_KEY: recording})
    return patched, recording
