"""NESTED_ADAPTER: a validated adapter file, held by ComfyUI's model management.

The adapter's modules are built with ``comfy.ops.manual_cast`` and wrapped in a ModelPatcher,
so ComfyUI loads them to the GPU when they run (encoding a subject, projecting its nested keys and
values) and offloads them under memory pressure, like any other model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch
from torch import Tensor

from ..nested_core.adapter import AdapterConfig, NestedAdapter, build_adapter, fingerprint
from ..nested_core.checkpoint import load_adapter_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """The one shape of NESTED_ADAPTER."""

    name: str  # file name as the user picked it
    path: str
    format: str  # "native nested-adapter" or "IP-Adapter-Plus"
    config: AdapterConfig
    fingerprint: str  # id of the encoder, stored with subjects
    patcher: comfy.model_patcher.ModelPatcher

    @property
    def module(self) -> NestedAdapter:
        return self.patcher.model

    def encode(self, features: Tensor) -> tuple[Tensor, list[Tensor]]:
        """CLIP penultimate features [M, P, E] -> subject tokens [M, N, C] and the Q-Former's
        attention of every layer [M, heads, N, P + N], float32 on the CPU side."""
        mm.load_models_gpu([self.patcher])
        attention: list[Tensor] = []
        with torch.no_grad():
            tokens = self.module.encode(features.to(self.patcher.load_device, torch.float32), attention)
        device = mm.intermediate_device()
        return tokens.to(device, torch.float32), [a.to(device, torch.float32) for a in attention]

    def project(self, tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Subject tokens [1, N, C] -> nested (K~, V~) per adapter layer, float32 on the CPU side."""
        mm.load_models_gpu([self.patcher])
        with torch.no_grad():
            pairs = self.module.project(tokens.to(self.patcher.load_device, torch.float32))
        device = mm.intermediate_device()
        return [(k.to(device, torch.float32), v.to(device, torch.float32)) for k, v in pairs]


def load_adapter(path: str, name: Optional[str] = None) -> LoadedAdapter:
    """Read and validate an adapter file (any supported file layout) and wrap it for ComfyUI."""
    checkpoint = load_adapter_checkpoint(path)
    module = build_adapter(checkpoint.config, checkpoint.state_dict, ops=comfy.ops.manual_cast)
    module.to(mm.unet_offload_device())
    patcher = comfy.model_patcher.ModelPatcher(
        module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    adapter = LoadedAdapter(
        name=name or os.path.basename(path),
        path=checkpoint.path,
        format=checkpoint.format,
        config=checkpoint.config,
        fingerprint=fingerprint(checkpoint.config, checkpoint.state_dict),
        patcher=patcher,
    )
    log.info("Nested Attention: loaded %s (%s): %s", adapter.name, adapter.format, adapter.config.describe())
    return adapter
