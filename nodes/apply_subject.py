"""Binding one encoded subject to one prompt token of a model: everything checked before sampling."""

from __future__ import annotations

import logging
from typing import Optional

import comfy.patcher_extension
import torch
from comfy.model_patcher import ModelPatcher
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.layers import LayerKey, bind_layers
from ..nested_core.subject import SubjectTokens
from .adapter_runtime import LoadedAdapter
from .contract import REGISTRY_KEY, WRAPPER_KEY, SubjectBinding, with_transformer_options
from .model_layers import attn2_sites
from .patch import NestedAttn2Patch
from .sampling import calc_cond_batch_wrapper, outer_sample_wrapper
from .tokens import describe_occurrence, resolve_token, same_token_conflict

log = logging.getLogger(__name__)


def apply_subject(
    model: ModelPatcher,
    adapter: LoadedAdapter,
    subject: SubjectTokens,
    token: str,
    weight: float = 1.0,
    start_at: float = 0.0,
    end_at: float = 1.0,
    attn_mask: Optional[Tensor] = None,
    occurrence: int = 0,
) -> ModelPatcher:
    """A clone of ``model`` in which ``subject`` replaces the value of ``token`` in every attn2 layer.

    The input model is left untouched. Raises NestedAttentionError, naming the input at fault,
    for anything that would otherwise fail or silently do nothing during sampling.
    """
    _check_settings(token, occurrence, start_at, end_at)
    token_id = resolve_token(token)
    _check_subject(adapter, subject)
    registry: tuple[SubjectBinding, ...] = model.model_options.get("transformer_options", {}).get(REGISTRY_KEY, ())
    name = f"'{token.strip()}' ({describe_occurrence(occurrence)})"
    for other in registry:
        if same_token_conflict((other.token_id, other.occurrence), (token_id, occurrence)):
            raise NestedAttentionError(
                f"subject {name} and subject {other.name} would both bind the same prompt token; give each its "
                f"own word, or set occurrence to 1 and 2 to bind the first and second '{token.strip()}'"
            )

    sites = attn2_sites(model)
    layer_binding = bind_layers(
        adapter.name, adapter.config.layer_dims, adapter.config.context_dim, adapter.config.layer_keys, sites
    )
    if layer_binding.unserved or layer_binding.unused:
        log.warning(
            "Nested Attention: adapter %s has no weights for %d of the model's %d cross-attention layers "
            "(e.g. %s), which run plain attention%s",
            adapter.name,
            len(layer_binding.unserved),
            len(sites),
            ", ".join(map(str, layer_binding.unserved[:3])) or "none",
            f"; its layers {', '.join(layer_binding.unused[:3])} are not in this model" if layer_binding.unused else "",
        )

    pairs = adapter.project(subject.tokens)
    layers = {key: pairs[index] for key, index in layer_binding.index_of.items()}
    sampling = model.get_model_object("model_sampling")
    binding = SubjectBinding(
        name=name,
        token_id=token_id,
        occurrence=occurrence,
        weight=float(weight),
        sigma_start=float(sampling.percent_to_sigma(start_at)),
        sigma_end=float(sampling.percent_to_sigma(end_at)),
        layers=layers,
        mask=_prepare_mask(attn_mask),
        patch_maps=subject.patch_maps,
        token_photo=subject.token_photo,
    )

    patched = model.clone()
    patched.model_options = with_transformer_options(patched.model_options, {REGISTRY_KEY: registry + (binding,)})
    for key in layers:
        _install_patch(patched, key)
    for kind, wrapper in (
        (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
        (comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, calc_cond_batch_wrapper),
    ):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    log.info("Nested Attention: bound subject %s (weight %.2f) on %d layers", name, weight, len(layers))
    return patched


def _check_settings(token: str, occurrence: int, start_at: float, end_at: float) -> None:
    resolve_token(token)
    if occurrence < 0:
        raise NestedAttentionError(
            f"occurrence is {occurrence}; use 0 for every occurrence of '{token}' or n >= 1 for the n-th"
        )
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise NestedAttentionError(f"start_at {start_at} and end_at {end_at}: expected 0 <= start_at <= end_at <= 1")


def _check_subject(adapter: LoadedAdapter, subject: SubjectTokens) -> None:
    if subject.adapter_fingerprint and subject.adapter_fingerprint != adapter.fingerprint:
        raise NestedAttentionError(
            f"the subject was encoded with another adapter's Q-Former (id {subject.adapter_fingerprint}) than "
            f"'{adapter.name}' (id {adapter.fingerprint}); encode the subject with the adapter you apply"
        )
    if subject.context_dim != adapter.config.context_dim:
        raise NestedAttentionError(
            f"the subject's tokens have width {subject.context_dim}; adapter '{adapter.name}' "
            f"expects {adapter.config.context_dim}"
        )


def _prepare_mask(mask: Optional[Tensor]) -> Optional[Tensor]:
    """MASK input [H, W] or [B, H, W] -> float [B or 1, H, W] on the CPU side, values clamped to [0, 1]."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise NestedAttentionError(
            f"attn_mask has shape {list(mask.shape)}; expected a MASK of shape [H, W] or [B, H, W]"
        )
    return mask.detach().to("cpu", torch.float32).clamp(0.0, 1.0)


def _install_patch(model: ModelPatcher, key: LayerKey) -> None:
    """Put a NestedAttn2Patch on ``key``, keeping ours and wrapping any other pack's patch there."""
    attn2 = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    existing = attn2.get(tuple(key), attn2.get((key.block, key.number)))
    if isinstance(existing, NestedAttn2Patch):
        return
    model.set_model_attn2_replace(NestedAttn2Patch(key, wrapped=existing), key.block, key.number, key.depth)
