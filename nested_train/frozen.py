"""The frozen parts of training (UNet, text encoders, VAE, CLIP vision) and where they come from.

The trainer takes them from a ``FrozenPartsLoader`` it is given: ``CheckpointFiles`` reads the files
named in the settings with ComfyUI's own loaders (the default); the toy world and the tests inject
loaders of their own small models. A loader first lists what is wrong with the settings, so a
missing file is reported with the data problems, before anything large is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from ..nested_core.layers import LayerKey, SiteShape
from ..nodes.model_layers import attn2_sites
from .config import TrainConfig


@dataclass
class FrozenParts:
    model: Any  # comfy ModelPatcher (the UNet)
    clip: Any  # comfy CLIP (tokenizer + text encoders)
    vae: Any  # comfy VAE
    clip_vision: Any  # comfy ClipVisionModel
    sites: dict[LayerKey, SiteShape]  # every attn2 layer of the UNet

    @classmethod
    def of(cls, model: Any, clip: Any, vae: Any, clip_vision: Any) -> "FrozenParts":
        """The parts, frozen (no gradients), with the UNet's attn2 layers read off it."""
        model.model.requires_grad_(False)
        clip.cond_stage_model.requires_grad_(False)
        clip_vision.model.requires_grad_(False)
        return cls(model, clip, vae, clip_vision, attn2_sites(model))

    @property
    def vision_width(self) -> int:
        """The hidden width of the CLIP vision model (the Q-Former's input width)."""
        return int(self.clip_vision.model.vision_model.embeddings.class_embedding.shape[-1])


class FrozenPartsLoader(Protocol):
    def problems(self, config: TrainConfig) -> list[str]:
        """What in the settings keeps the parts from loading (checked before the data is read)."""
        ...

    def load(self, config: TrainConfig) -> FrozenParts: ...


class CheckpointFiles:
    """``base`` (an SD1.5 or SDXL checkpoint) and ``clip_vision``, read with ComfyUI's loaders."""

    def problems(self, config: TrainConfig) -> list[str]:
        found = []
        for name, what in (("base", "an SD1.5 or SDXL checkpoint file"), ("clip_vision", "a CLIP vision file")):
            path = getattr(config, name)
            if not path:
                found.append(f"{name} is not set ({what})")
            elif not os.path.isfile(path):
                found.append(f"{name}: {path} does not exist ({what})")
        return found

    def load(self, config: TrainConfig) -> FrozenParts:
        import comfy.clip_vision
        import comfy.sd

        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(config.base, output_vae=True, output_clip=True)
        if clip is None or vae is None:
            raise ValueError(f"{config.base}: the checkpoint has no text encoder or no VAE")
        vision = comfy.clip_vision.load(config.clip_vision)
        if vision is None:
            raise ValueError(f"{config.clip_vision}: not a CLIP vision model ComfyUI recognises")
        return FrozenParts.of(model, clip, vae, vision)
