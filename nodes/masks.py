"""Region masks resized to the token grid of an attention layer."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_grid(tokens: int, extra_options: dict[str, Any]) -> tuple[int, int]:
    """(h, w) of the feature map whose h*w image tokens a layer attends from."""
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == tokens:
        return int(shape[2]), int(shape[3])
    height, width = extra_options["original_shape"][2:4]
    scale = math.sqrt(height * width / tokens)
    h = max(1, round(height / scale))
    return h, tokens // h


def mask_for_layer(mask: Tensor, tokens: int, extra_options: dict[str, Any]) -> Tensor:
    """A mask [B or 1, H, W] in [0, 1] as weights per image token: [B or 1, tokens]."""
    h, w = layer_grid(tokens, extra_options)
    resized = F.interpolate(mask[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    flat = resized.flatten(1)
    if flat.shape[1] != tokens:  # odd sizes the grid guess cannot tile exactly
        flat = F.pad(flat, (0, max(0, tokens - flat.shape[1])), value=0.0)[:, :tokens]
    return flat.clamp(0.0, 1.0)


def rows_for_batch(per_item: Tensor, batch: int, chunks: int) -> Tensor:
    """[M, tokens] per latent item -> [chunks * batch, tokens]: item j uses mask min(j, M-1)."""
    index = torch.clamp(torch.arange(batch, device=per_item.device), max=per_item.shape[0] - 1)
    return per_item.index_select(0, index).repeat(chunks, 1)
