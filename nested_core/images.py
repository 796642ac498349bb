"""Preparing photos the way CLIP sees them: its neutral colour for masked-out background, and the
centre square its preprocessing keeps. Images are ComfyUI's layout, [B, H, W, C] in 0..1."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: CLIP's per-channel pixel mean: the colour its encoder reads as "nothing" (0 after normalising).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def fill_background(image: Tensor, weight: Tensor, mean: Sequence[float] = CLIP_MEAN) -> Tensor:
    """Blend towards ``mean`` where ``weight`` (broadcastable to the image, 1 on the subject) is 0."""
    fill = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
    return image[..., :3] * weight + fill * (1 - weight)


def center_square(image: Tensor, size: int, antialias: bool = False) -> Tensor:
    """[B, H, W, C] -> the centre square resized to [B, size, size, 3] (bilinear), as CLIP crops."""
    _, height, width, _ = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[:, top : top + side, left : left + side, :3].permute(0, 3, 1, 2).float()
    resized = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=antialias, align_corners=False)
    return resized.permute(0, 2, 3, 1).clamp(0, 1)
