"""Encoding photos of a subject into its nested tokens: CLIP vision features through the Q-Former."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.images import CLIP_MEAN, fill_background
from ..nested_core.maps import qformer_patch_maps
from ..nested_core.subject import SubjectTokens
from .adapter_runtime import LoadedAdapter

COMBINE_MODES = ("average", "concat")


def encode_subject(
    adapter: LoadedAdapter, clip_vision: Any, image: Tensor, mask: Optional[Tensor] = None, combine: str = "average"
) -> SubjectTokens:
    """Encode a batch of photos of one subject into one SubjectTokens; errors name the input at fault."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise NestedAttentionError(
            f"Encode Subject: image has shape {list(image.shape)}; expected at least one "
            "photo (a batch [B, H, W, C] with B >= 1)"
        )
    if combine not in COMBINE_MODES:
        raise NestedAttentionError(
            f"Encode Subject: combine is '{combine}'; expected one of {', '.join(COMBINE_MODES)}"
        )
    width = clip_vision_width(clip_vision)
    if width is not None and width != adapter.config.clip_vision_width:
        raise NestedAttentionError(
            f"Encode Subject: the CLIP vision model has width {width} but adapter '{adapter.name}' expects "
            f"{adapter.config.clip_vision_width} ({_vision_name(adapter.config.clip_vision_width)}); "
            "load the CLIP vision model the adapter was trained with"
        )
    features = clip_features(clip_vision, image, mask)
    if features.shape[-1] != adapter.config.clip_vision_width:
        raise NestedAttentionError(
            f"Encode Subject: CLIP vision features have width {features.shape[-1]}; adapter "
            f"'{adapter.name}' expects {adapter.config.clip_vision_width}"
        )
    tokens, attention = adapter.encode(features)  # [M, N, C], per layer [M, h, N, P+N]
    photos, count = tokens.shape[0], tokens.shape[1]
    try:
        maps: Optional[Tensor] = qformer_patch_maps(attention, count)  # [M, N, g, g], for the maps node
    except ValueError:
        maps = None
    if combine == "average":
        tokens = tokens.mean(dim=0, keepdim=True)
        patch_maps = maps.mean(dim=0) if maps is not None else None
        token_photo = torch.full((count,), -1, dtype=torch.long)
    else:
        tokens = tokens.reshape(1, photos * count, tokens.shape[-1])
        patch_maps = maps.flatten(0, 1) if maps is not None else None
        token_photo = torch.arange(photos).repeat_interleave(count)
    return SubjectTokens(
        tokens=tokens,
        adapter_fingerprint=adapter.fingerprint,
        num_images=photos,
        combine=combine,
        patch_maps=patch_maps,
        token_photo=token_photo if patch_maps is not None else None,
    )


def clip_vision_width(clip_vision) -> Optional[int]:
    """Hidden width of a ComfyUI CLIP vision model, read from its class embedding when it has one."""
    embeddings = getattr(getattr(getattr(clip_vision, "model", None), "vision_model", None), "embeddings", None)
    class_embedding = getattr(embeddings, "class_embedding", None)
    return int(class_embedding.shape[-1]) if isinstance(class_embedding, Tensor) else None


def _vision_name(width: int) -> str:
    return {1280: "CLIP ViT-H/14", 1024: "CLIP ViT-L/14", 1664: "CLIP ViT-bigG/14"}.get(width, "a CLIP vision model")


def clip_features(clip_vision: Any, image: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Penultimate-layer CLIP vision features [B, P, E] of photos [B, H, W, C] (centre-cropped by CLIP's
    preprocessing), the background filled with CLIP's mean colour where a mask is 0."""
    if mask is not None:
        image = _masked(image, mask, getattr(clip_vision, "image_mean", CLIP_MEAN))
    return clip_vision.encode_image(image[..., :3], crop=True)["penultimate_hidden_states"]


def _masked(image: Tensor, mask: Tensor, mean) -> Tensor:
    """Blend each photo towards CLIP's mean colour where its mask is 0."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] == 0:
        raise NestedAttentionError(f"Encode Subject: mask has shape {list(mask.shape)}; expected [H, W] or [B, H, W]")
    if mask.shape[0] not in (1, image.shape[0]):
        raise NestedAttentionError(
            f"Encode Subject: {mask.shape[0]} masks for {image.shape[0]} photos; give one mask "
            "for all photos or one per photo"
        )
    resized = F.interpolate(mask[:, None].float(), size=image.shape[1:3], mode="bilinear", align_corners=False)
    weight = resized.permute(0, 2, 3, 1).clamp(0, 1).to(image)  # [B, H, W, 1]
    return fill_background(image, weight, mean)
