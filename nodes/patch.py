"""The attn2 replacement that adds nested attention to one cross-attention layer.

One ``NestedAttn2Patch`` sits on each attn2 key ``(block, number, depth)``. It computes the
layer's ordinary output (ComfyUI's kernel, or the patch another pack had put there, which it
wraps rather than drops), then adds each bound subject's correction
``Σ_p a_p (v*_q − V_p)`` (paper Eq. 1 and 3, see ``nested_core.attention``). The subjects are not
stored in the patch: they come from the ``SubjectSource`` the sampling wrappers (or the trainer) put
in the call's options (see ``contract``), so one patch object serves any number of chained Apply
nodes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from comfy.ldm.modules.attention import optimized_attention
from torch import Tensor

from ..nested_core.attention import nested_attention
from ..nested_core.layers import LayerKey
from .contract import NO_SIGMA, RECORD_KEY, STEP_KEY, LayerSubjects, SubjectSource, sigma_of


class NestedAttn2Patch:
    """Callable as ComfyUI's attn2 replacement: ``patch(q, k, v, extra_options) -> out``.

    ``wrapped`` is another pack's replacement found on this layer (called for the base output);
    ``added`` holds callbacks other packs attach with ``add()`` (the protocol IPAdapter_plus,
    InstantID and PuLID use on whatever object occupies a layer): each adds
    ``callback(out, q, k, v, extra_options, **kwargs)`` while its sigma window is active.
    """

    def __init__(
        self, layer: LayerKey, wrapped: Optional[Callable] = None, added: tuple[tuple[Callable, dict], ...] = ()
    ):
        self.layer = layer
        self.wrapped = wrapped
        self.added = added

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        if self.wrapped is not None:
            out = self.wrapped(q, k, v, extra_options)
        else:
            out = optimized_attention(
                q,
                k,
                v,
                extra_options["n_heads"],
                attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options,
            )
        if self.added:
            out = self._run_added(out, q, k, v, extra_options)
        step: Optional[SubjectSource] = extra_options.get(STEP_KEY)
        if step is None:
            return out
        bound = step.subjects_for(self.layer, q, k, extra_options)
        if bound is None:
            return out
        result = self.combine(q, k, v, extra_options["n_heads"], bound, out)
        recording = extra_options.get(RECORD_KEY)
        if recording is not None:
            recording.record(self.layer, q, k, v, bound, extra_options)
        return result

    def combine(self, q: Tensor, k: Tensor, v: Tensor, heads: int, bound: LayerSubjects, base: Tensor) -> Tensor:
        """The layer output with the subjects in: nested attention (Eq. 1 and 3), added into ``base``
        (this call's own output tensor) with the run's prepared positions."""
        return nested_attention(q, k, v, heads, bound.subjects, base=base, picks=bound.picks, inplace=True)

    def _run_added(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        sigma = sigma_of(extra_options.get("sigmas"))
        for callback, kwargs in self.added:
            if kwargs.get("sigma_end", 0.0) <= sigma <= kwargs.get("sigma_start", NO_SIGMA):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)

    def add(self, callback: Callable, **kwargs: Any) -> None:
        """The add-a-callback protocol of IPAdapter_plus-family packs (the one mutating method)."""
        self.added = self.added + ((callback, kwargs),)

    def to(self, device_or_dtype: Any) -> "NestedAttn2Patch":
        """ComfyUI moves patches with the model; only a wrapped foreign patch holds tensors."""
        if self.wrapped is not None and hasattr(self.wrapped, "to"):
            return type(self)(self.layer, self.wrapped.to(device_or_dtype), self.added)
        return self

    def models(self) -> list:
        """Models a wrapped patch needs loaded with the UNet (ours precomputes its tensors)."""
        return list(self.wrapped.models()) if self.wrapped is not None and hasattr(self.wrapped, "models") else []

    def __deepcopy__(self, memo: dict) -> "NestedAttn2Patch":
        # A fresh shell per model clone, so add() on one clone never reaches another; the wrapped
        # patch and callbacks are shared, as ComfyUI's own shallow clones share them.
        return type(self)(self.layer, self.wrapped, self.added)

    def __repr__(self) -> str:
        return f"NestedAttn2Patch({self.layer}, wrapped={type(self.wrapped).__name__ if self.wrapped else None})"
