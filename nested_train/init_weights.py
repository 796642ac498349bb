"""Deterministic weights for models built with ComfyUI's classes and trained from scratch (or left
random): ComfyUI's ``comfy.ops`` layers skip PyTorch's initialisation, so their memory holds whatever
it held."""

from __future__ import annotations

import torch


def init_weights_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """comfy.ops layers skip initialisation (their memory holds garbage): set every parameter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.is_floating_point():
                continue
            if (
                p.ndim == 1
                and ("norm" in name or name.endswith("ln_1.weight") or "layer_norm" in name)
                and name.endswith("weight")
            ):
                p.fill_(1.0)
            elif p.ndim == 1 and name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module
