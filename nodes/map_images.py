"""Turning recorded maps into IMAGE tensors ([B, H, W, 3] in 0..1, ComfyUI's layout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# A perceptual "magma"-like ramp: black, purple, orange, pale yellow.
_RAMP = torch.tensor([[0.0, 0.0, 0.02], [0.32, 0.07, 0.47], [0.72, 0.21, 0.47], [0.98, 0.55, 0.35], [0.99, 0.99, 0.75]])


def colorize(values: Tensor) -> Tensor:
    """[..., h, w] in 0..1 -> [..., h, w, 3] colours."""
    scaled = values.clamp(0, 1) * (len(_RAMP) - 1)
    low = scaled.floor().long().clamp(max=len(_RAMP) - 2)
    t = (scaled - low).unsqueeze(-1)
    return _RAMP[low] * (1 - t) + _RAMP[low + 1] * t


def normalised(values: Tensor) -> Tensor:
    """Divide each map [..., h, w] by its maximum (an all-zero map stays zero)."""
    peak = values.flatten(-2).amax(-1)[..., None, None]
    return values / peak.clamp_min(1e-12)


def resize_map(values: Tensor, height: int, width: int) -> Tensor:
    """[B, h, w] -> [B, H, W], bilinear."""
    return F.interpolate(values[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.6) -> Tensor:
    """Blend heat [B, h, w] (0..1) over image [B, H, W, 3]."""
    heat = resize_map(heat, image.shape[1], image.shape[2])
    colours = colorize(heat)
    weight = (alpha * (0.3 + 0.7 * heat.clamp(0, 1))).unsqueeze(-1)
    return (image[..., :3].float().cpu() * (1 - weight) + colours * weight).clamp(0, 1)


def mark_point(image: Tensor, x: float, y: float, radius: int = 4) -> Tensor:
    """Draw a small white-ringed dot at (x, y) (fractions of width and height) on [B, H, W, 3]."""
    out = image.clone()
    _, height, width, _ = out.shape
    cy, cx = int(y * (height - 1)), int(x * (width - 1))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = ((ys - cy) ** 2 + (xs - cx) ** 2).float().sqrt()
    out[:, distance <= radius + 1.5] = 1.0
    out[:, distance <= radius] = torch.tensor([0.1, 0.8, 1.0])
    return out
