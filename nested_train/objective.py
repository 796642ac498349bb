"""One training forward: the frozen UNet, patched by the nodes' own attn2 patch, predicts the
noise-free latent; the loss is the model's own diffusion loss (eps or v, as the checkpoint says)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import comfy.model_sampling
import torch
from torch import Tensor

from ..nested_core.attention import NestedSubject, TokenPositions
from ..nested_core.layers import LayerKey
from ..nested_core.maps import per_query_values
from ..nodes.contract import LayerSubjects
from ..nodes.patch import NestedAttn2Patch
from ..nodes.tokens import prompt_tokens


@dataclass
class TrainingStep:
    """The ``contract.SubjectSource`` of a training forward (the role StepState plays while
    sampling): each example's nested keys/values per layer and its token positions."""

    kv: dict[LayerKey, tuple[Tensor, Tensor]]  # (K~, V~) [B, N, inner], with gradients
    positions: TokenPositions  # [B, P]
    value_norms: list[Tensor] = field(default_factory=list)
    track_values: bool = False

    def subjects_for(
        self, layer: LayerKey, q: Tensor, k: Tensor, extra_options: dict[str, Any]
    ) -> Optional[LayerSubjects]:
        if layer not in self.kv or not self.positions.rows:
            return None
        nested_k, nested_v = self.kv[layer]
        if self.track_values and torch.is_grad_enabled():
            v_star = per_query_values(q, nested_k, nested_v, extra_options["n_heads"])
            self.value_norms.append(v_star.pow(2).mean())
        return LayerSubjects((0,), (NestedSubject(nested_k.to(q.dtype), nested_v.to(q.dtype), self.positions),))


def patches(sites: Iterable[LayerKey], patch_class: Optional[type] = None) -> dict[tuple, NestedAttn2Patch]:
    """One NestedAttn2Patch per attn2 layer: the very object the Apply node installs."""
    patch_class = patch_class or NestedAttn2Patch
    return {tuple(key): patch_class(key) for key in sites}


def encode_caption(clip: Any, caption: str, word_id: int) -> tuple[Tensor, Tensor, list[int]]:
    """Frozen text encoding of one caption: context [1, L, C], pooled [1, C'], the class word's positions."""
    tokens = clip.tokenize(caption)
    with torch.no_grad():
        context, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return context.float(), pooled.float(), prompt_tokens(tokens, caption).occurrences(word_id)


def diffusion_loss(model_sampling, x0_pred: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """The model's own objective, written on its x0 prediction.

    eps models: MSE between predicted and true noise = |x0_pred − x0|² / σ².
    v models:   MSE between predicted and true v = |x0_pred − x0|² / c_out², c_out = σ σd / √(σ² + σd²).
    """
    error = (x0_pred.float() - x0.float()).pow(2).flatten(1).mean(1)
    s = sigma.float()
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        data = float(model_sampling.sigma_data)
        weight = (s**2 + data**2) / (s**2 * data**2)
    elif isinstance(model_sampling, comfy.model_sampling.EPS):
        weight = 1.0 / s**2
    else:
        raise ValueError(f"unsupported prediction type {type(model_sampling).__name__} (eps and v are supported)")
    return error * weight


def noise_and_sigma(model_sampling, latent_shape: Sequence[int], seeds: Sequence[str], device) -> tuple[Tensor, Tensor]:
    """Per-example noise and a uniform timestep's sigma, from per-example seeds (process independent)."""
    noise, sigmas = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(hashlib.sha256(seed.encode()).hexdigest()[:15], 16))
        noise.append(torch.randn(tuple(latent_shape), generator=gen))
        timestep = random.Random(seed).randrange(len(model_sampling.sigmas))
        sigmas.append(model_sampling.sigmas[timestep].float().cpu())
    return torch.stack(noise).to(device), torch.stack(sigmas).to(device)
