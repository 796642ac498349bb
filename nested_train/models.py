"""The trainable adapter: built for the UNet's layers, from scratch or from an existing file."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..nested_core.adapter import AdapterConfig, NestedAdapter, family_of_context_dim
from ..nested_core.checkpoint import load_adapter_checkpoint
from ..nested_core.layers import bind_layers, diffusers_order
from ..nested_core.qformer import QFormerConfig
from ..nodes.model_layers import attn2_modules
from .config import TrainConfig
from .frozen import FrozenParts

log = logging.getLogger(__name__)


class TrainableAdapter(nn.Module):
    """The trained module: CLIP features -> (tokens, nested K~/V~ of every layer). DDP wraps this."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, features: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        tokens = self.adapter.encode(features)
        return tokens, self.adapter.project(tokens)


def create_adapter(config: TrainConfig, parts: FrozenParts, words: tuple[str, ...] = ()) -> NestedAdapter:
    """A NestedAdapter for the model's layers: from an existing file, or freshly initialised.
    ``words`` are the subjects' words (the run's class word when empty), stored as its class word."""
    keys = tuple(diffusers_order(parts.sites))
    context = {s.context_dim for s in parts.sites.values()}.pop()
    vision_width = parts.vision_width
    if config.init_adapter:
        checkpoint = load_adapter_checkpoint(config.init_adapter)
        layer_binding = bind_layers(
            config.init_adapter,
            checkpoint.config.layer_dims,
            checkpoint.config.context_dim,
            checkpoint.config.layer_keys,
            parts.sites,
        )
        if layer_binding.unserved:
            raise ValueError(
                f"{config.init_adapter} lacks weights for layers {[str(k) for k in layer_binding.unserved[:4]]}"
            )
        state = {k: v.float() for k, v in checkpoint.state_dict.items() if k.startswith("qformer.")}
        for new, key in enumerate(keys):
            old = layer_binding.index_of[key]
            state[f"nested.{new}.to_k.weight"] = checkpoint.state_dict[f"nested.{old}.to_k.weight"].float()
            state[f"nested.{new}.to_v.weight"] = checkpoint.state_dict[f"nested.{old}.to_v.weight"].float()
        settings = checkpoint.config.qformer
        log.info("starting from %s (%s)", config.init_adapter, checkpoint.format)
    else:
        state = None
        settings = QFormerConfig(
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
            f"the adapter expects CLIP vision width {settings.in_dim}; the CLIP vision model has {vision_width}"
        )
    adapter_config = AdapterConfig(
        qformer=settings,
        layer_dims=tuple(parts.sites[k].inner_dim for k in keys),
        layer_keys=keys,
        base_family=family_of_context_dim(context),
        class_word="/".join(words) if words else config.class_word,
    )
    torch.manual_seed(config.seed)
    adapter = NestedAdapter(adapter_config)
    if state is not None:
        adapter.load_state_dict(state, strict=True)
    elif config.init_from_unet:
        # As IP-Adapter initialises its to_k_ip/to_v_ip: the nested tokens start out projected as the
        # layer projects text, so the values live where the word's own value lives.
        modules = attn2_modules(parts.model)
        with torch.no_grad():
            for index, key in enumerate(keys):
                adapter.nested[index].to_k.weight.copy_(modules[key].to_k.weight)
                adapter.nested[index].to_v.weight.copy_(modules[key].to_v.weight)
    return adapter


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
