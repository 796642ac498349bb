"""The frozen parts (UNet, text encoders, VAE, CLIP vision), loaded with ComfyUI's own loaders,
and the trainable adapter."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .runtime import pack

log = logging.getLogger(__name__)


@dataclass
class FrozenParts:
    model: Any  # comfy ModelPatcher (the UNet)
    clip: Any  # comfy CLIP (tokenizer + text encoders)
    vae: Any  # comfy VAE
    clip_vision: Any  # comfy ClipVisionModel
    sites: dict  # LayerKey -> SiteShape of every attn2 layer


def load_frozen(config: TrainConfig) -> FrozenParts:
    """Base model files through ComfyUI's loaders; "tiny:<family>" builds the test stand-ins."""
    import comfy.clip_vision
    import comfy.sd

    if config.base.startswith("tiny:"):
        from nested_dev import tiny_models

        kind = config.base.split(":", 1)[1]
        model, clip, vae = (
            tiny_models.build_unet(kind, seed=0),
            tiny_models.build_clip(kind, 0),
            tiny_models.build_vae(0),
        )
    elif config.base.startswith("toy:"):
        from pathlib import Path

        from toy_world.models import load_toy

        model, clip, vae = load_toy(Path(config.base.split(":", 1)[1]))
    else:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(config.base, output_vae=True, output_clip=True)
        if clip is None or vae is None:
            raise ValueError(f"{config.base}: the checkpoint has no text encoder or no VAE")
    if config.clip_vision == "tiny":
        from nested_dev import tiny_models

        vision = tiny_models.build_clip_vision(0)
    elif config.clip_vision == "toy":
        from toy_world.models import build_clip_vision

        vision = build_clip_vision()
    else:
        vision = comfy.clip_vision.load(config.clip_vision)
        if vision is None:
            raise ValueError(f"{config.clip_vision}: not a CLIP vision model ComfyUI recognises")
    model.model.requires_grad_(False)
    clip.cond_stage_model.requires_grad_(False)
    vision.model.requires_grad_(False)
    return FrozenParts(model, clip, vae, vision, pack().nodes.model_layers.attn2_sites(model))


class TrainableAdapter(nn.Module):
    """The trained module: CLIP features -> (tokens, nested K~/V~ of every layer). DDP wraps this."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, features: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        tokens = self.adapter.encode(features)
        return tokens, self.adapter.project(tokens)


def create_adapter(config: TrainConfig, parts: FrozenParts, vision_width: int) -> nn.Module:
    """A NestedAdapter for the model's layers: from an existing file, or freshly initialised."""
    core = pack().nested_core
    keys = tuple(core.layers.diffusers_order(parts.sites))
    context = {s.context_dim for s in parts.sites.values()}.pop()
    if config.init_adapter:
        checkpoint = core.checkpoint.load_adapter_checkpoint(config.init_adapter)
        layout = core.layers.bind_layers(
            config.init_adapter,
            checkpoint.config.layer_dims,
            checkpoint.config.context_dim,
            checkpoint.config.layer_keys,
            parts.sites,
        )
        if layout.unserved:
            raise ValueError(f"{config.init_adapter} lacks weights for layers {[str(k) for k in layout.unserved[:4]]}")
        state = {k: v.float() for k, v in checkpoint.state_dict.items() if k.startswith("qformer.")}
        for new, key in enumerate(keys):
            old = layout.index_of[key]
            state[f"nested.{new}.to_k.weight"] = checkpoint.state_dict[f"nested.{old}.to_k.weight"].float()
            state[f"nested.{new}.to_v.weight"] = checkpoint.state_dict[f"nested.{old}.to_v.weight"].float()
        settings = checkpoint.config.qformer
        log.info("starting from %s (%s)", config.init_adapter, checkpoint.format)
    else:
        state = None
        settings = core.qformer.QFormerConfig(
            num_queries=config.num_tokens,
            dim=config.qformer_dim,
            depth=config.qformer_depth,
            heads=config.qformer_heads,
            head_dim=config.qformer_head_dim,
            ff_mult=4,
            in_dim=vision_width,
            out_dim=context,
        )
    if settings.in_dim != vision_width:
        raise ValueError(
            f"the adapter expects CLIP vision width {settings.in_dim}; {config.clip_vision} has {vision_width}"
        )
    adapter_config = core.adapter.AdapterConfig(
        qformer=settings,
        layer_dims=tuple(parts.sites[k].inner_dim for k in keys),
        layer_keys=keys,
        base_family=core.adapter.family_of_context_dim(context),
        class_word=config.class_word,
    )
    torch.manual_seed(config.seed)
    adapter = core.adapter.NestedAdapter(adapter_config)
    if state is not None:
        adapter.load_state_dict(state, strict=True)
    return adapter


def vision_width(vision: Any) -> int:
    embedding = vision.model.vision_model.embeddings.class_embedding
    return int(embedding.shape[-1])


@contextlib.contextmanager
def gradient_checkpointing(unet: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each UNet block's activations in the backward pass instead of keeping them.

    As ComfyUI's own LoRA trainer does: the forward of every child of the input, middle and
    output blocks is wrapped with torch.utils.checkpoint on this (training-only) model instance,
    and restored on exit.
    """
    if not enabled:
        yield
        return
    wrapped = []
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        for module in block.children():
            original = module.forward

            def checkpointed(*args: Any, _forward=original, **kwargs: Any) -> Any:
                return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            module.forward = checkpointed
            wrapped.append((module, original))
    try:
        yield
    finally:
        for module, _ in wrapped:
            del module.forward  # back to the class's own forward
